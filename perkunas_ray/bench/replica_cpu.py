"""Where a round's CPU went: the serving replica's event loop, its torch thread and its other threads (the OpenMP
team's workers, Ray's), and this process's load client, each per output token; and the share of the round the
torch thread spent runnable but waiting for a core.

On a machine with as many cores as the engine has threads, whatever the HTTP path and the client spend comes out
of the engine's cores: these figures say how much, and where (the replica reports them in /kvserve/stats, from
kvserve/thread_cpu.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from perkunas_ray.kvserve.thread_cpu import GROUPS

CPU_KEYS = ("event_loop_cpu_ms_per_token", "torch_cpu_ms_per_token", "other_cpu_ms_per_token",
        "client_cpu_ms_per_token", "torch_waiting_for_cpu")
CPU_LABELS = {"event_loop_cpu_ms_per_token": "replica event loop, ms CPU / token",
          "torch_cpu_ms_per_token": "replica torch thread, ms CPU / token",
          "other_cpu_ms_per_token": "replica other threads, ms CPU / token",
          "client_cpu_ms_per_token": "load client, ms CPU / token",
          "torch_waiting_for_cpu": "torch thread waiting for a core, %"}


def replica_threads(url: str, headers: dict[str, str], model: str) -> dict[str, dict[str, float]]:
    """The replica's CPU seconds by thread group (empty where the replica cannot read them)."""
    request = urllib.request.Request(f"{url}/kvserve/stats?model={model}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp).get("thread_cpu") or {}


def with_cpu(round_: Callable[[list[list[int]], int], dict[str, Any]], url: str, headers: dict[str, str],
             model: str) -> Callable[[list[list[int]], int], dict[str, Any]]:
    """`round_` (an HTTP side's round runner), its result with CPU_KEYS added when the replica reports its threads."""

    def measured(prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        before, client_before, start = replica_threads(url, headers, model), time.process_time(), time.perf_counter()
        result = round_(prompts, new_tokens)
        client_s, wall = time.process_time() - client_before, time.perf_counter() - start
        after = replica_threads(url, headers, model)
        tokens = result["output_tokens"]
        if not before or not after or not tokens:
            return result
        spent = {group: {key: after[group][key] - before[group][key] for key in ("cpu_s", "wait_s")}
                 for group in GROUPS}
        for group in GROUPS:
            result[f"{group}_cpu_ms_per_token"] = 1e3 * spent[group]["cpu_s"] / tokens
        result["client_cpu_ms_per_token"] = 1e3 * client_s / tokens
        result["torch_waiting_for_cpu"] = 100 * spent["torch"]["wait_s"] / wall
        return result
    return measured
