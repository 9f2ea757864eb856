"""Run vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) for the length of a benchmark."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perkunas_ray.bench.llama_server import healthy
from perkunas_ray.errors import PerkunasError

START_TIMEOUT_S = 600.0  # a first start on a CPU compiles (minutes on 2 cores)
SKIPPED_ARGS = ("model", "tokenizer", "seed")  # given as flags of their own below, or left to the server


def server_flags(engine_args: dict[str, Any]) -> list[str]:
    """AsyncEngineArgs keywords as the server's command-line flags (`--max-num-seqs 16`, `--no-enable-...`); a value
    equal to the engine's default is left out (not every boolean has a `--no-` form)."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs

    defaults = {f.name: f.default for f in dataclasses.fields(AsyncEngineArgs)}
    flags: list[str] = []
    for key, value in engine_args.items():
        if key in SKIPPED_ARGS or value is None or defaults.get(key, dataclasses.MISSING) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


@contextlib.contextmanager
def vllm_server(model_dir: str | Path, served_name: str, engine_args: dict[str, Any],
                env: dict[str, str] | None = None) -> Iterator[str]:
    """vLLM's OpenAI server on 127.0.0.1:<free port> for the Hugging Face package `model_dir`, with the same engine
    arguments our vLLM engine takes (`engine_args`, AsyncEngineArgs keywords) so the two differ only in what serves
    them; yields its base URL once /health answers 200, stops it at the end. Its log goes to a temporary file,
    named in the error if it fails to start."""
    from deployments.launch import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
           *server_flags(engine_args)]
    log = tempfile.NamedTemporaryFile(prefix="vllm_server_", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PerkunasError(f"vLLM's server did not start ({' '.join(cmd)}; exit code {proc.poll()}); "
                                    f"its log: {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the server and its engine-core process
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
