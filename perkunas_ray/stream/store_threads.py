"""The shard store's update threads: how many a run gets, and the pool that runs one update's tasks on them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import TypeVar

import torch

# A host optimizer step streams parameters, gradients and moments through memory once: past about eight cores a
# socket's memory bandwidth is spent, and the cores beyond are worth more to the data loader and the copy threads.
MAX_AUTO_THREADS = 8
T = TypeVar("T")
R = TypeVar("R")


def trains_on_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def resolve_store_threads(store_threads: int, device: str, cores: int = 0) -> int:
    """stream.store_threads, with 0 (auto) decided by where the compute runs. On a CPU the compute owns the cores
    (its matmuls use them all), so the store updates on the thread that calls it (1). On CUDA the cores are idle
    but for the one that launches the GPU's kernels: the store takes the others, at most MAX_AUTO_THREADS.
    `cores`: the node's (0: this process's)."""
    if store_threads > 0:
        return store_threads
    if not trains_on_cuda(device):
        return 1
    return max(1, min((cores or len(os.sched_getaffinity(0))) - 1, MAX_AUTO_THREADS))


class UpdatePool:
    """`num_threads` threads whose torch operations run single-threaded, so N threads use N cores and a task's
    result does not depend on how many there are; with one, tasks run on the calling thread (torch's own
    intra-op threads then apply, as they did before the pool)."""

    def __init__(self, num_threads: int) -> None:
        self.num_threads = num_threads
        self._executor: ThreadPoolExecutor | None = None
        if num_threads > 1:
            self._executor = ThreadPoolExecutor(num_threads, thread_name_prefix="store-update")
            started = threading.Barrier(num_threads + 1)
            before = torch.get_num_threads()

            def single_threaded() -> None:
                torch.set_num_threads(1)
                started.wait()

            for _ in range(num_threads):  # each blocks on the barrier, so every one lands on its own thread
                self._executor.submit(single_threaded)
            started.wait()
            # torch.set_num_threads also sets the count that threads started later begin with: give that back
            torch.set_num_threads(before)

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run every task once; each thread takes the next one as it finishes its last (so a thread slowed by
        another process on its core takes fewer). The first error raises here after all threads stop."""
        if self._executor is None:
            for task in tasks:
                task()
            return
        queue: SimpleQueue = SimpleQueue()
        for task in tasks:
            queue.put(task)

        def drain() -> None:
            while True:
                try:
                    task = queue.get_nowait()
                except Empty:
                    return
                task()

        futures = [self._executor.submit(drain) for _ in range(min(self.num_threads, len(tasks)))]
        for future in futures:
            future.exception()  # wait for every thread before raising
        for future in futures:
            future.result()

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """[fn(item) for item in items], the items spread over the threads."""
        results: list = [None] * len(items)

        def call(i: int) -> Callable[[], None]:
            def run() -> None:
                results[i] = fn(items[i])
            return run

        self.run([call(i) for i in range(len(items))])
        return results

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
