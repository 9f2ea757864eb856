"""Prometheus metric names: the contract between the emitters (actors, deployments) and the dashboards.

Ray exports application metrics with a `ray_` prefix, so `perkunas_train_loss` is scraped as
`ray_perkunas_train_loss`. Names must match ^[a-zA-Z_:][a-zA-Z0-9_:]*$ or Ray drops them silently.
"""

from __future__ import annotations

import re

RAY_PREFIX = "ray_"
VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

# Training gauges, one per train_log step field (tag: run).
TRAIN_GAUGES = {
    "loss": "perkunas_train_loss",
    "lr": "perkunas_train_lr",
    "grad_norm": "perkunas_train_grad_norm",
    "clip_scale": "perkunas_train_clip_scale",
    "guard_scale": "perkunas_train_guard_scale",
    "guard_replays": "perkunas_train_guard_replays",
    "tokens_per_s": "perkunas_train_tokens_per_second",
    "tokens_seen": "perkunas_train_tokens_seen",
    "step": "perkunas_train_step",
    "step_time_s": "perkunas_train_step_seconds",
    "wait_s": "perkunas_train_wait_seconds",
    "forward_s": "perkunas_train_forward_seconds",
    "backward_s": "perkunas_train_backward_seconds",
    "update_s": "perkunas_train_update_seconds",
    "write_s": "perkunas_train_write_seconds",
    "resident_shards": "perkunas_train_resident_shards",
    "resident_bytes": "perkunas_train_resident_bytes",
    "peak_bytes": "perkunas_train_peak_bytes",
    "rss_bytes": "perkunas_train_rss_bytes",
    "prefetch_hits": "perkunas_train_prefetch_hits",
    "prefetch_misses": "perkunas_train_prefetch_misses",
    "pending_writes": "perkunas_train_pending_writes",
    "flush_lag_steps": "perkunas_train_flush_lag_steps",
    "last_flushed_step": "perkunas_train_last_flushed_step",
}
TRAIN_VAL_LOSS = "perkunas_train_val_loss"
# Data-parallel training: one gauge per train_log "worker" record field (tags: run, worker).
TRAIN_WORKER_GAUGES = {
    "tokens_per_s": "perkunas_train_worker_tokens_per_second",
    "reduce_s": "perkunas_train_worker_reduce_seconds",
    "wait_s": "perkunas_train_worker_wait_seconds",
    "step_time_s": "perkunas_train_worker_step_seconds",
}

# Serving metrics (tags in comments).
SERVE_REQUESTS = "perkunas_serve_requests_total"  # counter; route, status
SERVE_TTFT = "perkunas_serve_ttft_seconds"  # histogram; model
SERVE_ITL = "perkunas_serve_inter_token_seconds"  # histogram; model
SERVE_E2E = "perkunas_serve_e2e_seconds"  # histogram; model
SERVE_PROMPT_TOKENS = "perkunas_serve_prompt_tokens_total"  # counter; model
SERVE_GENERATION_TOKENS = "perkunas_serve_generation_tokens_total"  # counter; model
SERVE_KV_BLOCKS_USED = "perkunas_serve_kv_blocks_used"  # gauge; model, replica
SERVE_KV_BLOCKS_FREE = "perkunas_serve_kv_blocks_free"  # gauge; model, replica
SERVE_PREFIX_QUERIES = "perkunas_serve_prefix_cache_queries_total"  # counter (tokens); model
SERVE_PREFIX_HITS = "perkunas_serve_prefix_cache_hits_total"  # counter (tokens); model
SERVE_PREEMPTIONS = "perkunas_serve_preemptions_total"  # counter; model
SERVE_ROUTER_DECISIONS = "perkunas_serve_router_decisions_total"  # counter; decision=prefix_match|fallback
SERVE_QUEUE_LENGTH = "perkunas_serve_queue_length"  # gauge; model, replica

ALL_NAMES = (*TRAIN_GAUGES.values(), TRAIN_VAL_LOSS, *TRAIN_WORKER_GAUGES.values(), SERVE_REQUESTS, SERVE_TTFT, SERVE_ITL, SERVE_E2E,
             SERVE_PROMPT_TOKENS, SERVE_GENERATION_TOKENS, SERVE_KV_BLOCKS_USED, SERVE_KV_BLOCKS_FREE,
             SERVE_PREFIX_QUERIES, SERVE_PREFIX_HITS, SERVE_PREEMPTIONS, SERVE_ROUTER_DECISIONS, SERVE_QUEUE_LENGTH)
