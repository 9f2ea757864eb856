"""One trainer per run dir: an OS lock on a local run dir, a renewed lease file on a filesystem URI.

    with RunDirLock(run_dir):      # a second trainer gets RunDirLockedError naming host, pid and since
        train(...)

Local (a path or file://): fcntl.flock on RUN/.lock, which the kernel drops when the holder dies, so a
stale lock of a dead process is simply taken over. The file holds the holder's host, pid and start
time, for the error message only. Elsewhere (s3://, gs://, ...) there is no lock primitive: RUN/.lock
is a lease with an expiry that a thread of the holder renews; an expired lease, or one whose holder
is a dead process on this host, is taken over. A holder that finds its lease taken marks itself `lost`.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.errors import CheckpointError

LOCK_FILE = ".lock"
DEFAULT_LEASE_S = 60.0
_NO_OS_LOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # e.g. some NFS mounts: fall back to a lease
log = logging.getLogger(__name__)


class RunDirLockedError(CheckpointError):
    """Another process holds the run dir."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    since: float  # unix time the holder took the lock
    expires_at: float | None = None  # leases only
    token: str = ""  # leases only: tells this holder's lease from a successor's

    @classmethod
    def me(cls, lease_s: float | None = None) -> LockHolder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, None if lease_s is None else now + lease_s,
                   uuid.uuid4().hex)

    @classmethod
    def parse(cls, data: bytes) -> LockHolder | None:
        try:
            raw: Any = json.loads(data)
            return cls(str(raw["host"]), int(raw["pid"]), float(raw["since"]), raw.get("expires_at"),
                       str(raw.get("token", "")))
        except (ValueError, KeyError, TypeError):
            return None  # empty or half-written: nobody we could name

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.since).isoformat(timespec="seconds")
        return f"host {self.host}, pid {self.pid}, since {since}"

    def is_dead_here(self) -> bool:
        """A process of this host that no longer runs (its lock is stale)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


class RunDirLock:
    """Exclusive use of a run dir for one trainer, as a context manager; `use_lease` forces the lease kind."""

    def __init__(self, run_dir: str | Path, lease_s: float = DEFAULT_LEASE_S, use_lease: bool | None = None) -> None:
        self.run_dir = DurableDir(run_dir)
        self.lease_s = lease_s
        self.use_lease = self.run_dir.local_path is None if use_lease is None else use_lease
        self.holder: LockHolder | None = None
        self.lost = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.use_lease:
            try:
                self._acquire_os_lock()
                return
            except OSError as exc:
                if exc.errno not in _NO_OS_LOCK:
                    raise
                log.warning("run dir %s: the file system has no flock (%s); using a lease file", self.where, exc)
                self.use_lease = True
        self._acquire_lease()

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
            lease = self._read_lease()
            if not self.lost and lease is not None and self.holder is not None and lease.token == self.holder.token:
                self.run_dir.delete_file(LOCK_FILE)
        self.holder = None

    @property
    def where(self) -> str:
        return self.run_dir.location

    def _locked(self, holder: LockHolder | None) -> RunDirLockedError:
        who = holder.describe() if holder else "a process that has not yet written its name"
        return RunDirLockedError(f"run dir {self.where} is in use by another trainer ({who}); stop it, or pick "
                                 f"another --run-dir")

    # ---- local: the kernel's lock --------------------------------------------------------------------
    def _acquire_os_lock(self) -> None:
        assert self.run_dir.local_path is not None
        self.run_dir.local_path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir.local_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = LockHolder.parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise self._locked(holder) from None
        except BaseException:
            os.close(fd)
            raise
        self.holder = LockHolder.me()
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.to_bytes(), 0)
        os.fsync(fd)
        self._fd = fd

    # ---- elsewhere: a renewed lease ------------------------------------------------------------------
    def _read_lease(self) -> LockHolder | None:
        if not self.run_dir.is_file(LOCK_FILE):
            return None
        return LockHolder.parse(self.run_dir.read_bytes(LOCK_FILE))

    def _acquire_lease(self) -> None:
        current = self._read_lease()
        if current is not None and (current.expires_at or 0) > time.time() and not current.is_dead_here():
            raise self._locked(current)
        if current is not None:
            log.warning("run dir %s: taking over the stale lease of %s", self.where, current.describe())
        self.holder = LockHolder.me(self.lease_s)
        self.run_dir.write_bytes(LOCK_FILE, self.holder.to_bytes())
        # No compare-and-swap on an object store: wait a moment, then see whose write survived.
        time.sleep(min(1.0, self.lease_s / 10))
        winner = self._read_lease()
        if winner is None or winner.token != self.holder.token:
            self.holder = None
            raise self._locked(winner)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.where}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            assert self.holder is not None
            try:
                current = self._read_lease()
                if current is None or current.token != self.holder.token:
                    self.lost = True
                    log.error("run dir %s: lost the lease to %s", self.where,
                              current.describe() if current else "nobody (the lease file vanished)")
                    return
                self.holder = dataclasses.replace(self.holder, expires_at=time.time() + self.lease_s)
                self.run_dir.write_bytes(LOCK_FILE, self.holder.to_bytes())
            except OSError as exc:  # a network blip: the lease still has time left, try again next round
                log.warning("run dir %s: could not renew the lease (%s)", self.where, exc)
