"""Write-behind of shard files: a writer thread with a bounded number of pending writes (back-pressure)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable


class WriteBehind:
    """Runs write jobs in submission order on one thread; `submit` blocks while `max_pending` are queued.

    With `asynchronous=False` every job runs inline (the caller waits for the disk).
    """

    def __init__(self, max_pending: int, asynchronous: bool = True) -> None:
        self.asynchronous = asynchronous
        self.max_pending = max_pending
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_pending)
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.error: BaseException | None = None
        self.write_s = 0.0  # time spent writing (async: on the writer thread)
        self.blocked_s = 0.0  # time callers waited for a free slot
        self.num_writes = 0
        self._thread: threading.Thread | None = None
        if asynchronous:
            self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
            self._thread.start()

    def _do(self, job: Callable[[], None]) -> None:
        start = time.perf_counter()
        job()
        self.write_s += time.perf_counter() - start
        self.num_writes += 1

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                if self.error is None:
                    self._do(job)
            except BaseException as exc:  # surfaced on the next submit / drain
                self.error = exc
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def submit(self, job: Callable[[], None]) -> None:
        self.raise_error()
        if not self.asynchronous:
            self._do(job)
            return
        with self._idle:
            self._pending += 1
        start = time.perf_counter()
        self._queue.put(job)  # blocks while max_pending jobs wait: the bound on pending writes
        self.blocked_s += time.perf_counter() - start

    @property
    def pending(self) -> int:
        return self._pending

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every submitted write is on disk."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"a shard write failed: {self.error}") from self.error

    def close(self) -> None:
        """Finish queued writes and stop the thread (a write error was, or will be, raised by drain/submit)."""
        if self._thread is not None:
            with self._idle:
                self._idle.wait_for(lambda: self._pending == 0)
            self._queue.put(None)
            self._thread.join(timeout=10)
