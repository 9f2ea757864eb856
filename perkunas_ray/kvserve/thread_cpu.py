"""CPU time of a serving process by the thread that spent it: its event loop, its torch thread, and the rest.

A replica's HTTP work (the event loop) and its engine (the torch thread and the OpenMP team it leads) share the
machine's cores, so what the stack costs shows up as CPU the loop takes and as time the engine's threads wait
for a core. Neither psutil nor the standard library reads another thread's run-queue wait; Linux's
/proc/self/task/<tid>/schedstat holds both figures per thread (ns on a CPU, ns runnable but waiting for one), so
this reads it. Elsewhere (no /proc) there is nothing to report and the result is empty.
"""

from __future__ import annotations

import threading
from pathlib import Path

from perkunas_ray.engine.torch_thread import TORCH_THREAD_PREFIX

TASKS = Path("/proc/self/task")
GROUPS = ("event_loop", "torch", "other")  # other: the OpenMP team's workers, Ray's threads, thread pools


def _schedstat(tid: str) -> tuple[float, float] | None:
    try:
        on_cpu_ns, wait_ns, _ = (TASKS / tid / "schedstat").read_text().split()
    except (OSError, ValueError):  # the thread exited meanwhile
        return None
    return int(on_cpu_ns) / 1e9, int(wait_ns) / 1e9


def thread_cpu(loop_tid: int | None) -> dict[str, dict[str, float]]:
    """Per group of this process's threads (GROUPS): seconds on a CPU (`cpu_s`) and seconds runnable but waiting
    for one (`wait_s`), since each thread started. `loop_tid`: the event loop's native thread id. A thread that
    exits takes its time with it, so a difference across its exit undercounts its group."""
    if not TASKS.is_dir():
        return {}
    torch_tids = {t.native_id for t in threading.enumerate() if t.name.startswith(TORCH_THREAD_PREFIX)}
    totals = {group: {"cpu_s": 0.0, "wait_s": 0.0} for group in GROUPS}
    for task in TASKS.iterdir():
        stat = _schedstat(task.name)
        if stat is None:
            continue
        tid = int(task.name)
        group = "event_loop" if tid == loop_tid else "torch" if tid in torch_tids else "other"
        totals[group]["cpu_s"] += stat[0]
        totals[group]["wait_s"] += stat[1]
    return totals
