"""kvserve/thread_cpu.py reads this process's threads from /proc: CPU a thread spends lands in its group."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from perkunas_ray.engine.torch_thread import TORCH_THREAD_PREFIX
from perkunas_ray.kvserve.thread_cpu import GROUPS, thread_cpu

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_lands_in_the_group_of_the_thread_that_spent_it():
    loop_tid = threading.get_native_id()  # this thread plays the event loop
    done = threading.Event()
    spun = threading.Barrier(3)

    def work(seconds: float) -> None:
        _spin(seconds)
        spun.wait()
        done.wait()  # alive until read: an exited thread's time leaves /proc/self/task with it

    before = thread_cpu(loop_tid)
    threads = [threading.Thread(target=work, args=(0.2,), name=f"{TORCH_THREAD_PREFIX}-test"),
               threading.Thread(target=work, args=(0.4,), name="some-pool")]
    for thread in threads:
        thread.start()
    _spin(0.3)
    spun.wait()
    after = thread_cpu(loop_tid)
    done.set()
    for thread in threads:
        thread.join()
    spent = {group: after[group]["cpu_s"] - before[group]["cpu_s"] for group in GROUPS}
    assert set(after) == set(GROUPS)
    assert 0.29 <= spent["event_loop"] < 0.39, spent
    assert 0.19 <= spent["torch"] < 0.29, spent  # its own thread's, not the pool thread's
    assert spent["other"] >= 0.39, spent
    assert all(after[group]["wait_s"] >= before[group]["wait_s"] for group in GROUPS)
