"""The Grafana dashboards for training and serving, generated from metric_names.py so names cannot drift.

Every query uses the name Ray exports (`ray_` + the name in metric_names.py; Ray keeps a counter name
that already ends in `_total` as is, and exports histograms as `_bucket`/`_sum`/`_count`).
`perkunas dashboards generate` writes the JSON committed under dashboards/; a unit test checks that
the committed files equal this module's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perkunas_ray.telemetry import metric_names as mn

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TRAINING_UID = "perkunas-training"
SERVING_UID = "perkunas-serving"
PANEL_HEIGHT = 8
PANEL_WIDTH = 12
TOKENS_PER_S = "count:tok/s"  # Grafana custom unit: 1.2K tok/s


def ray_name(name: str) -> str:
    """The name under which Prometheus sees a Ray application metric."""
    return mn.RAY_PREFIX + name


def train(field_name: str) -> str:
    """Ray-exported gauge name of a train_log step field."""
    return ray_name(mn.TRAIN_GAUGES[field_name])


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str = ""
    stacked: bool = False
    log_scale: bool = False
    min_value: float | None = None


@dataclass(frozen=True)
class PanelRow:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str  # label_values(...) expression
    description: str = ""


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[PanelRow, ...]
    variables: tuple[Variable, ...] = field(default_factory=tuple)


# ---- training ------------------------------------------------------------------------------------------
TRAIN_SEL = '{SessionName=~"$SessionName", run=~"$run"}'


def _t(field_name: str) -> str:
    return train(field_name) + TRAIN_SEL


def _w(field_name: str) -> str:
    """A data-parallel worker gauge (tags: run, worker) of a train_log "worker" record field."""
    return ray_name(mn.TRAIN_WORKER_GAUGES[field_name]) + TRAIN_SEL


def _by_run(expr: str) -> str:
    """Aggregate away Ray's per-worker labels so that ratios of two gauges match on `run` alone."""
    return f"sum by (run) ({expr})"


def training_spec() -> DashboardSpec:
    val = ray_name(mn.TRAIN_VAL_LOSS) + TRAIN_SEL
    seconds = [("wait_s", "wait"), ("forward_s", "forward"), ("backward_s", "backward"),
               ("update_s", "update"), ("write_s", "write")]
    rows = (
        PanelRow("Loss", (
            Panel("Train and validation loss", "none", (
                Target(_t("loss"), "train {{run}}"), Target(val, "validation {{run}}")),
                "Mean cross-entropy of the last optimizer step, and the last validation loss."),
            Panel("Perplexity", "none", (
                Target(f"exp({_t('loss')})", "train {{run}}"), Target(f"exp({val})", "validation {{run}}")),
                "exp(loss).", log_scale=True),
        )),
        PanelRow("Optimizer", (
            Panel("Learning rate", "none", (Target(_t("lr"), "{{run}}"),),
                  "Learning rate applied at the last step (after the schedule)."),
            Panel("Accepted guard scale", "percentunit", (Target(_t("guard_scale"), "{{run}}"),),
                  "LR / grad-norm scale of the accepted guarded step replay (100% = first try accepted).",
                  min_value=0),
            Panel("Guard replays per step", "none", (Target(_t("guard_replays"), "{{run}}"),),
                  "Replays the guard needed before it accepted (or gave up on) the step.", min_value=0),
            Panel("Gradient norm", "none", (Target(_t("grad_norm"), "{{run}}"),),
                  "Global gradient norm before clipping.", min_value=0),
            Panel("Clip scale", "percentunit", (Target(_t("clip_scale"), "{{run}}"),),
                  "Factor applied by gradient clipping (100% = not clipped).", min_value=0),
        )),
        PanelRow("Throughput and step timing", (
            Panel("Throughput", TOKENS_PER_S, (Target(_t("tokens_per_s"), "{{run}}"),),
                  "Training tokens per second of the last step.", min_value=0),
            Panel("Step time", "s", (Target(_t("step_time_s"), "{{run}}"),),
                  "Wall time of the last optimizer step.", min_value=0),
            Panel("Step time breakdown", "s",
                  tuple(Target(_t(f), f"{label} {{{{run}}}}") for f, label in seconds),
                  "Where the step's time went: waiting for shards, forward, backward (replay), update, "
                  "shard write-back.", stacked=True, min_value=0),
            Panel("Progress: step and tokens seen", "short", (
                Target(_t("step"), "step {{run}}"), Target(_t("tokens_seen"), "tokens {{run}}")),
                "Optimizer steps done and training tokens consumed.", log_scale=True),
        )),
        PanelRow("Shard residency and prefetch", (
            Panel("Resident shards", "none", (Target(_t("resident_shards"), "{{run}}"),),
                  "Stream shards resident on the compute device.", min_value=0),
            Panel("Prefetch hits and misses", "none", (
                Target(_t("prefetch_hits"), "hits {{run}}"), Target(_t("prefetch_misses"), "misses {{run}}")),
                "Shard loads served by the prefetcher (hits) or loaded on demand (misses) in the last step.",
                min_value=0),
            Panel("Prefetch hit rate", "percentunit", (Target(
                f"{_by_run(_t('prefetch_hits'))} / clamp_min({_by_run(_t('prefetch_hits'))} + "
                f"{_by_run(_t('prefetch_misses'))}, 1)", "{{run}}"),),
                "hits / (hits + misses).", min_value=0),
            Panel("Pending shard writes", "none", (Target(_t("pending_writes"), "{{run}}"),),
                  "Updated shards queued for asynchronous write-back.", min_value=0),
            Panel("Durable flush", "none", (
                Target(_t("flush_lag_steps"), "lag (steps) {{run}}"),
                Target(_t("last_flushed_step"), "last flushed step {{run}}")),
                "Steps since the last durable flush, and the step it published.", min_value=0),
        )),
        PanelRow("Data-parallel workers", (
            Panel("Throughput per worker", TOKENS_PER_S, (Target(_w("tokens_per_s"), "worker {{worker}} {{run}}"),),
                  "Tokens per second each worker computed in the last step (its slice of the global batch).",
                  min_value=0),
            Panel("Reduction and waiting per worker", "s", (
                Target(_w("reduce_s"), "reduce {{worker}} {{run}}"), Target(_w("wait_s"), "wait {{worker}} {{run}}"),
                Target(_w("step_time_s"), "step {{worker}} {{run}}")),
                "Seconds of the last step each worker spent on gradient sums not hidden behind the replay, "
                "waiting for shards, and in all.", min_value=0),
        )),
        PanelRow("Memory", (
            Panel("Memory", "bytes", (
                Target(_t("peak_bytes"), "peak {{run}}"), Target(_t("rss_bytes"), "RSS {{run}}"),
                Target(_t("resident_bytes"), "resident shards {{run}}")),
                "Peak device (or tracked) bytes, process RSS, and bytes of resident shards.", min_value=0),
        )),
    )
    variables = (
        Variable("SessionName", "Ray session", f"label_values({train('step')}, SessionName)",
                 "Ray session (one per `ray start`)."),
        Variable("run", "Run", f'label_values({train("step")}{{SessionName=~"$SessionName"}}, run)',
                 "Training run (its run directory's name)."),
    )
    return DashboardSpec(TRAINING_UID, "Perkunas training",
                         "Streaming training runtime: loss, optimizer, throughput, shard residency, memory.",
                         rows, variables)


# ---- serving -------------------------------------------------------------------------------------------
SESSION_SEL = 'SessionName=~"$SessionName"'
MODEL_SEL = '{SessionName=~"$SessionName", model=~"$model"}'


def _rate(name: str, sel: str = MODEL_SEL) -> str:
    return f"rate({ray_name(name)}{sel}[$__rate_interval])"


def _quantiles(name: str) -> tuple[Target, ...]:
    bucket = ray_name(name) + "_bucket" + MODEL_SEL
    return tuple(Target(f"histogram_quantile({q}, sum by (le, model) (rate({bucket}[$__rate_interval])))",
                        f"p{round(q * 100)} {{{{model}}}}") for q in (0.5, 0.95, 0.99))


def serving_spec() -> DashboardSpec:
    requests = ray_name(mn.SERVE_REQUESTS)
    req_sel = "{" + SESSION_SEL + "}"
    err_sel = "{" + SESSION_SEL + ', status!~"2.."}'
    used = f"sum by (model, replica) ({ray_name(mn.SERVE_KV_BLOCKS_USED)}{MODEL_SEL})"
    free = f"sum by (model, replica) ({ray_name(mn.SERVE_KV_BLOCKS_FREE)}{MODEL_SEL})"
    rows = (
        PanelRow("Requests", (
            Panel("Requests per second", "reqps", (Target(
                f"sum by (route, status) (rate({requests}{req_sel}[$__rate_interval]))", "{{route}} {{status}}"),),
                "HTTP requests answered by the ingress, by route and status.", min_value=0),
            Panel("Error ratio", "percentunit", (Target(
                f"(sum(rate({requests}{err_sel}[$__rate_interval])) or vector(0)) / "
                f"clamp_min(sum(rate({requests}{req_sel}[$__rate_interval])), 1e-9)", "non-2xx"),),
                "Share of requests whose status is not 2xx.", min_value=0),
            Panel("Router decisions", "ops", (Target(
                f"sum by (decision) ({_rate(mn.SERVE_ROUTER_DECISIONS, req_sel)})", "{{decision}}"),),
                "KV-aware router: requests sent to the replica holding their prefix, or by the fallback.",
                stacked=True, min_value=0),
            Panel("Queue length", "none", (Target(
                f"{ray_name(mn.SERVE_QUEUE_LENGTH)}{MODEL_SEL}", "{{model}} {{replica}}"),),
                "Requests waiting in each engine replica's scheduler.", min_value=0),
        )),
        PanelRow("Latency", (
            Panel("Time to first token", "s", _quantiles(mn.SERVE_TTFT),
                  "From request arrival to the first generated token.", min_value=0),
            Panel("Inter-token latency", "s", _quantiles(mn.SERVE_ITL),
                  "Time between consecutive generated tokens.", min_value=0),
            Panel("End-to-end latency", "s", _quantiles(mn.SERVE_E2E),
                  "From request arrival to the last token.", min_value=0),
        )),
        PanelRow("Tokens", (
            Panel("Token throughput", TOKENS_PER_S, (
                Target(f"sum by (model) ({_rate(mn.SERVE_PROMPT_TOKENS)})", "prompt {{model}}"),
                Target(f"sum by (model) ({_rate(mn.SERVE_GENERATION_TOKENS)})", "generation {{model}}")),
                "Prompt tokens processed and tokens generated per second.", min_value=0),
        )),
        PanelRow("KV cache", (
            Panel("KV blocks used and free", "none", (
                Target(f"{ray_name(mn.SERVE_KV_BLOCKS_USED)}{MODEL_SEL}", "used {{model}} {{replica}}"),
                Target(f"{ray_name(mn.SERVE_KV_BLOCKS_FREE)}{MODEL_SEL}", "free {{model}} {{replica}}")),
                "Paged KV-cache blocks in use and free, per engine replica.", min_value=0),
            Panel("KV cache usage", "percentunit", (Target(
                f"{used} / clamp_min({used} + {free}, 1)", "{{model}} {{replica}}"),),
                "used / (used + free) blocks.", min_value=0),
            Panel("Prefix cache hit rate", "percentunit", (Target(
                f"sum by (model) ({_rate(mn.SERVE_PREFIX_HITS)}) / "
                f"clamp_min(sum by (model) ({_rate(mn.SERVE_PREFIX_QUERIES)}), 1e-9)", "{{model}}"),),
                "Prompt tokens found in the prefix cache / prompt tokens looked up.", min_value=0),
            Panel("Prefix cache lookups", TOKENS_PER_S, (
                Target(f"sum by (model) ({_rate(mn.SERVE_PREFIX_QUERIES)})", "queried {{model}}"),
                Target(f"sum by (model) ({_rate(mn.SERVE_PREFIX_HITS)})", "hit {{model}}")),
                "Prompt tokens looked up in, and found in, the prefix cache per second.", min_value=0),
            Panel("Preemptions", "ops", (Target(
                f"sum by (model) ({_rate(mn.SERVE_PREEMPTIONS)})", "{{model}}"),),
                "Requests preempted (recomputed later) because KV blocks ran out.", min_value=0),
        )),
    )
    variables = (
        Variable("SessionName", "Ray session",
                 f"label_values({ray_name(mn.SERVE_REQUESTS)}, SessionName)", "Ray session."),
        Variable("model", "Model",
                 f'label_values({ray_name(mn.SERVE_GENERATION_TOKENS)}{{SessionName=~"$SessionName"}}, model)',
                 "Served model name."),
    )
    return DashboardSpec(SERVING_UID, "Perkunas serving",
                         "kvserve: requests, latency (TTFT, inter-token, end-to-end), tokens, KV cache, router.",
                         rows, variables)


# ---- JSON ----------------------------------------------------------------------------------------------
def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if panel.stacked else 0,
                              "showPoints": "never", "spanNulls": True,
                              "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"}}
    if panel.log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    defaults: dict[str, Any] = {"unit": panel.unit, "custom": custom}
    if panel.min_value is not None:
        defaults["min"] = panel.min_value
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(DATASOURCE),
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": dict(DATASOURCE), "expr": t.expr,
                     "legendFormat": t.legend, "range": True} for i, t in enumerate(panel.targets)],
    }


def _variable_json(var: Variable) -> dict[str, Any]:
    return {
        "name": var.name, "label": var.label, "description": var.description, "type": "query",
        "datasource": dict(DATASOURCE), "definition": var.query,
        "query": {"query": var.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1, "hide": 0,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }


def dashboard_json(spec: DashboardSpec) -> dict[str, Any]:
    """A Grafana dashboard model (schemaVersion 39) with a Prometheus `datasource` variable."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in spec.rows:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id, y = next_id + 1, y + 1
        for i, panel in enumerate(row.panels):
            panels.append(_panel_json(panel, next_id, PANEL_WIDTH * (i % 2), y + PANEL_HEIGHT * (i // 2)))
            next_id += 1
        y += PANEL_HEIGHT * ((len(row.panels) + 1) // 2)
    datasource_var = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                      "refresh": 1, "hide": 0, "includeAll": False, "multi": False, "regex": "",
                      "current": {}, "options": [],
                      "description": "Prometheus that scrapes the Ray cluster."}
    return {
        "id": None,
        "uid": spec.uid,
        "title": spec.title,
        "description": spec.description,
        "tags": ["perkunas", "ray"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [datasource_var, *(_variable_json(v) for v in spec.variables)]},
        "links": [],
        "panels": panels,
    }


def all_dashboards() -> dict[str, dict[str, Any]]:
    """File name under dashboards/ -> dashboard JSON."""
    return {"training.json": dashboard_json(training_spec()), "serving.json": dashboard_json(serving_spec())}
