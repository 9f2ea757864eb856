"""Where a round's CPU went, per output token: the serving process's event loop, its torch thread and its other
threads (the OpenMP team's workers, Ray's), and the load client; and the share of the round the torch thread spent
runnable but waiting for a core.

On a machine with as many cores as the engine has threads, whatever the HTTP path and the client spend comes out
of the engine's cores: these figures say how much, and where. A replica reports its threads in /kvserve/stats
(kvserve/thread_cpu.py); the in-process engine side reads this process's, where the event loop is the one that
consumes the streams.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from perkunas_ray.kvserve.thread_cpu import GROUPS, thread_cpu

CPU_KEYS = ("event_loop_cpu_ms_per_token", "torch_cpu_ms_per_token", "other_cpu_ms_per_token",
            "client_cpu_ms_per_token", "torch_waiting_for_cpu")
CPU_LABELS = {"event_loop_cpu_ms_per_token": "event loop, ms CPU / token",
              "torch_cpu_ms_per_token": "torch thread, ms CPU / token",
              "other_cpu_ms_per_token": "other threads, ms CPU / token",
              "client_cpu_ms_per_token": "load client, ms CPU / token",
              "torch_waiting_for_cpu": "torch thread waiting for a core, %"}


def replica_threads(url: str, headers: dict[str, str], model: str) -> dict[str, dict[str, float]]:
    """The replica's CPU seconds by thread group (empty where the replica cannot read them)."""
    request = urllib.request.Request(f"{url}/kvserve/stats?model={model}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp).get("thread_cpu") or {}


Round = Callable[[list[list[int]], int], dict[str, Any]]


def _add_cpu(result: dict[str, Any], before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
             wall: float) -> None:
    tokens = result["output_tokens"]
    if not before or not after or not tokens:
        return
    for group in GROUPS:
        result[f"{group}_cpu_ms_per_token"] = 1e3 * (after[group]["cpu_s"] - before[group]["cpu_s"]) / tokens
    result["torch_waiting_for_cpu"] = 100 * (after["torch"]["wait_s"] - before["torch"]["wait_s"]) / wall


def with_cpu(round_: Round, url: str, headers: dict[str, str], model: str) -> Round:
    """`round_` (an HTTP side's round runner), its result with CPU_KEYS added when the replica reports its threads."""

    def measured(prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        before, client_before, start = replica_threads(url, headers, model), time.process_time(), time.perf_counter()
        result = round_(prompts, new_tokens)
        client_s, wall = time.process_time() - client_before, time.perf_counter() - start
        _add_cpu(result, before, replica_threads(url, headers, model), wall)
        if result["output_tokens"]:
            result["client_cpu_ms_per_token"] = 1e3 * client_s / result["output_tokens"]
        return result
    return measured


def with_local_cpu(round_: Round) -> Round:
    """`round_` (the in-process engine side's round runner, which consumes its streams on this thread's event
    loop), its result with this process's CPU by thread added (no load client)."""

    def measured(prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        loop_tid = threading.get_native_id()
        before, start = thread_cpu(loop_tid), time.perf_counter()
        result = round_(prompts, new_tokens)
        wall = time.perf_counter() - start
        _add_cpu(result, before, thread_cpu(loop_tid), wall)
        return result
    return measured
