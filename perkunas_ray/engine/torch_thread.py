"""The one thread that runs a serving process's tensor work.

libgomp (the OpenMP of PyTorch's CPU wheels) keeps a team of worker threads for every thread that ever ran a
parallel region, and once a process's teams hold more threads than it has CPUs it stops spin-waiting between
regions: every op then pays a futex wake-up per worker. An engine built on one thread and stepped on others
(asyncio.to_thread hands each step to any pool thread) streamed the speed preset at 219-260 tok/s at one
stream and 1,294-1,401 at 16 on 2 cores; built and stepped on this one thread, 410-428 and 1,788-1,852. So
a serving process builds its engines and runs every step here. Work that must not wait behind the steps
(loading a newer checkpoint) runs on a thread of its own that then exits, which frees its team.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

TORCH_THREAD_PREFIX = "perkunas-torch"
_TORCH = ThreadPoolExecutor(1, thread_name_prefix=TORCH_THREAD_PREFIX)


def _on_torch_thread() -> bool:
    return threading.current_thread().name.startswith(TORCH_THREAD_PREFIX)


def run_on_torch_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on the torch thread, from any thread; blocks until it is done."""
    if _on_torch_thread():
        return fn(*args)
    return _TORCH.submit(fn, *args).result()


def submit_to_torch_thread(fn: Callable[[], None]) -> None:
    """Queue fn() on the torch thread without waiting for it (fn reports its own errors)."""
    _TORCH.submit(fn)


async def on_torch_thread(fn: Callable[..., T], *args: Any) -> T:
    """Await fn(*args) on the torch thread."""
    return await asyncio.get_running_loop().run_in_executor(_TORCH, functools.partial(fn, *args))


async def on_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """Await fn(*args) on a new thread that exits afterwards (its OpenMP team goes with it)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="perkunas-load")
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))
    finally:
        pool.shutdown(wait=False)
