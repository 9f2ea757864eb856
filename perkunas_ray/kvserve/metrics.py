"""Serving metrics through `ray.util.metrics`, named by `telemetry.metric_names` (the dashboards' contract)."""

from __future__ import annotations

import contextlib
from typing import Any

from perkunas_ray.telemetry import metric_names as names

LATENCY_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


def _zero(counter: Any, tags: dict[str, str]) -> None:
    """Create a counter's series at 0, so dashboards see it before its first event (a preemption may never
    come). Ray's public `inc` refuses 0; `_record` is what it calls."""
    record = getattr(counter, "_record", None)
    if record is not None:
        with contextlib.suppress(Exception):  # best effort; the first real inc creates the series anyway
            record(0, tags=tags)


class _Null:
    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...


def _metrics_module(enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from ray.util import metrics
    except ImportError:  # pragma: no cover - ray is a dependency; plain use still works without it
        return None
    return metrics


class RequestMetrics:
    """Emitted by the ingress: requests by route/status, latencies, token counts."""

    def __init__(self, enabled: bool = True) -> None:
        m = _metrics_module(enabled)
        if m is None:
            null = _Null()
            self.requests = self.ttft = self.itl = self.e2e = self.prompt_tokens = self.generation_tokens = null
            return
        self.requests = m.Counter(names.SERVE_REQUESTS, "HTTP requests by route and status",
                                  tag_keys=("route", "status"))
        self.ttft = m.Histogram(names.SERVE_TTFT, "time to first token", LATENCY_BOUNDARIES, tag_keys=("model",))
        self.itl = m.Histogram(names.SERVE_ITL, "time between streamed tokens", LATENCY_BOUNDARIES,
                               tag_keys=("model",))
        self.e2e = m.Histogram(names.SERVE_E2E, "request latency, end to end", LATENCY_BOUNDARIES,
                               tag_keys=("model",))
        self.prompt_tokens = m.Counter(names.SERVE_PROMPT_TOKENS, "prompt tokens", tag_keys=("model",))
        self.generation_tokens = m.Counter(names.SERVE_GENERATION_TOKENS, "generated tokens", tag_keys=("model",))

    def request(self, route: str, status: int) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})


class EngineMetrics:
    """Emitted by each engine replica from its engine stats: KV blocks, prefix cache, preemptions, queue."""

    def __init__(self, model: str, replica: str, enabled: bool = True) -> None:
        self.tags = {"model": model, "replica": replica}
        self.model_tags = {"model": model}
        self._last: dict[str, int] = {}
        m = _metrics_module(enabled)
        if m is None:
            null = _Null()
            self.blocks_used = self.blocks_free = self.queue = self.prefix_queries = self.prefix_hits = null
            self.preemptions = null
            return
        self.blocks_used = m.Gauge(names.SERVE_KV_BLOCKS_USED, "KV blocks referenced by live sequences",
                                   tag_keys=("model", "replica"))
        self.blocks_free = m.Gauge(names.SERVE_KV_BLOCKS_FREE, "KV blocks free (cached ones included)",
                                   tag_keys=("model", "replica"))
        self.queue = m.Gauge(names.SERVE_QUEUE_LENGTH, "requests waiting in the engine's scheduler",
                             tag_keys=("model", "replica"))
        self.prefix_queries = m.Counter(names.SERVE_PREFIX_QUERIES, "prompt tokens looked up in the prefix cache",
                                        tag_keys=("model",))
        self.prefix_hits = m.Counter(names.SERVE_PREFIX_HITS, "prompt tokens found in the prefix cache",
                                     tag_keys=("model",))
        self.preemptions = m.Counter(names.SERVE_PREEMPTIONS, "sequences preempted (recomputed)",
                                     tag_keys=("model",))
        for counter in (self.prefix_queries, self.prefix_hits, self.preemptions):
            _zero(counter, self.model_tags)

    def _delta(self, key: str, value: int) -> int:
        last = self._last.get(key, 0)
        self._last[key] = value
        return max(0, value - last)

    def update(self, stats: Any) -> None:
        self.blocks_used.set(stats.num_blocks_used, tags=self.tags)
        self.blocks_free.set(stats.num_blocks_free, tags=self.tags)
        self.queue.set(stats.num_waiting, tags=self.tags)
        for counter, key in ((self.prefix_queries, "prefix_cache_queries_tokens"),
                             (self.prefix_hits, "prefix_cache_hits_tokens"), (self.preemptions, "num_preemptions")):
            delta = self._delta(key, int(getattr(stats, key)))
            if delta:
                counter.inc(delta, tags=self.model_tags)


class RouterMetrics:
    """Emitted by the request router: prefix-match vs fallback decisions."""

    def __init__(self, enabled: bool = True, deployment: str = "") -> None:
        m = _metrics_module(enabled)
        self.decisions = _Null() if m is None else m.Counter(
            names.SERVE_ROUTER_DECISIONS, "routing decisions", tag_keys=("decision", "deployment"))
        if m is not None:
            for kind in ("prefix_match", "fallback"):
                _zero(self.decisions, {"decision": kind, "deployment": deployment})

    def decision(self, kind: str, deployment: str = "") -> None:
        self.decisions.inc(1, tags={"decision": kind, "deployment": deployment})
