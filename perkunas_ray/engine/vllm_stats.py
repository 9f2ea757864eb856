"""What vLLM's frontend learns of its engine core (scheduler and iteration stats), kept for `VLLMEngine.stats`."""

from __future__ import annotations

import threading
from typing import Any


class VLLMStatsSink:
    """Filled by a vLLM stat logger on AsyncLLM's output loop; read from any thread.

    The engine core sends scheduler stats only along with outputs, so the counts are those of the last step
    that produced one: `num_running`/`num_waiting` go stale when a request is aborted and nothing else runs.
    `VLLMEngine.stats` corrects for that with the frontend's own count of unfinished requests.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.num_running = 0
        self.num_waiting = 0
        self.kv_cache_usage = 0.0  # the fraction of KV blocks held by live requests
        self.prefix_cache_queries_tokens = 0
        self.prefix_cache_hits_tokens = 0
        self.num_preemptions = 0
        self.num_generated_tokens = 0
        self.num_finished = 0
        self.num_failed = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        with self._lock:
            if scheduler_stats is not None:
                self.num_running = int(scheduler_stats.num_running_reqs)
                self.num_waiting = int(scheduler_stats.num_waiting_reqs)
                self.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
                prefix = scheduler_stats.prefix_cache_stats  # per update, not cumulative
                if prefix is not None:
                    self.prefix_cache_queries_tokens += int(prefix.queries)
                    self.prefix_cache_hits_tokens += int(prefix.hits)
            if iteration_stats is not None:
                self.num_generated_tokens += int(iteration_stats.num_generation_tokens)
                self.num_preemptions += int(iteration_stats.num_preempted_reqs)
                for finished in iteration_stats.finished_requests:
                    self.num_finished += 1
                    if str(getattr(finished, "finish_reason", "")).lower().endswith("error"):
                        self.num_failed += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def stat_logger_factory(sink: VLLMStatsSink) -> Any:
    """A vLLM StatLoggerFactory (called with vllm_config, engine_index) whose loggers record into `sink`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SinkLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.sink = sink

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            self.sink.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return SinkLogger
