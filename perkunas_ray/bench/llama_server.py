"""Run llama.cpp's `llama-server` on a GGUF file for the length of a benchmark (free loopback port, /health)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from perkunas_ray.errors import PerkunasError

START_TIMEOUT_S = 120.0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def llama_server(binary: str | Path, gguf: str | Path, threads: int, parallel: int = 16,
                 ctx_per_slot: int = 256) -> Iterator[str]:
    """`llama-server -m GGUF -np PARALLEL -t THREADS` on 127.0.0.1:<free port>; yields its base URL once /health
    answers 200, stops it at the end. Its log goes to a temporary file, named in the error if it fails to start."""
    from deployments.launch import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(binary), "-m", str(gguf), "-np", str(parallel), "-t", str(threads), "-c", str(parallel * ctx_per_slot),
           "--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.NamedTemporaryFile(prefix="llama_server_", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PerkunasError(f"llama-server did not start ({' '.join(cmd)}; exit code {proc.poll()}); "
                                    f"its log: {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
