"""RunDirLock: a second trainer (a real second process) is refused with the holder named; a dead holder's lock
is taken over; the lease kind (for filesystem URIs) expires, renews and notices a takeover."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perkunas_ray.checkpoint.lock import LOCK_FILE, LockHolder, RunDirLock, RunDirLockedError

pytestmark = pytest.mark.unit

_HOLD = """
import sys, time
from perkunas_ray.checkpoint.lock import RunDirLock
lock = RunDirLock(sys.argv[1], lease_s=float(sys.argv[2]), use_lease=sys.argv[3] == "lease")
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator:
    """Start a process that takes the lock of a run dir and keeps it until killed."""
    started: list[subprocess.Popen] = []

    def start(run_dir: Path, kind: str = "os", lease_s: float = 30.0) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir), str(lease_s), kind],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kind", ["os", "lease"])
def test_a_second_trainer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(holder, tmp_path, kind):
    run_dir = tmp_path / "run"
    proc = holder(run_dir, kind)
    use_lease = kind == "lease"
    with pytest.raises(RunDirLockedError, match=rf"run dir .*run is in use by another trainer \(host "
                                                rf"{socket.gethostname()}, pid {proc.pid}, since \d{{4}}-"):
        RunDirLock(run_dir, use_lease=use_lease).acquire()
    _kill(proc)
    with RunDirLock(run_dir, lease_s=5.0, use_lease=use_lease) as lock:
        assert lock.holder is not None and lock.holder.pid == os.getpid()
        with pytest.raises(RunDirLockedError, match=rf"pid {os.getpid()}"):
            RunDirLock(run_dir, use_lease=use_lease).acquire()  # one trainer per run dir, even in one process
    with RunDirLock(run_dir, use_lease=use_lease):
        pass  # released on exit: free again


def test_the_os_lock_file_names_the_holder_while_held(tmp_path):
    with RunDirLock(tmp_path / "run") as lock:
        written = LockHolder.parse((tmp_path / "run" / LOCK_FILE).read_bytes())
        assert written == lock.holder and written.host == socket.gethostname()


def _lease(run_dir: Path, host: str, expires_in: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": host, "pid": 1, "since": time.time() - 100,
                                                 "expires_at": time.time() + expires_in, "token": "theirs"}))


def test_a_live_lease_of_another_host_refuses_and_an_expired_one_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    _lease(run_dir, "gpu-node-7", expires_in=60)
    with pytest.raises(RunDirLockedError, match=r"host gpu-node-7, pid 1, since"):
        RunDirLock(run_dir, use_lease=True).acquire()
    _lease(run_dir, "gpu-node-7", expires_in=-1)
    with RunDirLock(run_dir, lease_s=5.0, use_lease=True) as lock:
        assert LockHolder.parse((run_dir / LOCK_FILE).read_bytes()) == lock.holder
    assert not (run_dir / LOCK_FILE).exists()


def test_a_lease_is_renewed_and_its_holder_notices_a_takeover(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunDirLock(run_dir, lease_s=0.6, use_lease=True)
    lock.acquire()
    first = LockHolder.parse((run_dir / LOCK_FILE).read_bytes())
    deadline = time.time() + 10
    while time.time() < deadline:
        current = LockHolder.parse((run_dir / LOCK_FILE).read_bytes())
        if current is not None and current.expires_at > first.expires_at:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the lease was never renewed")
    _lease(run_dir, "other-host", expires_in=60)
    deadline = time.time() + 10
    while not lock.lost and time.time() < deadline:
        time.sleep(0.05)
    assert lock.lost
    lock.release()
    assert LockHolder.parse((run_dir / LOCK_FILE).read_bytes()).host == "other-host"  # not ours to delete
