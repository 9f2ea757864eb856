"""The model registry (JSON or YAML): model id -> source, engine, KV policy, placement; validated at load.

```yaml
models:
  tiny:                       # the OpenAI model id
    source: runs/tiny         # a training run dir or a Hugging Face package dir (relative: to this file)
    engine: native            # native | vllm
    device: cpu               # cpu | cuda | cuda:N
    dtype: fp32               # fp32 | bf16 | fp16 (vllm also: auto)
    num_replicas: 2           # or autoscaling_config: {min_replicas: 1, max_replicas: 4}
    num_cpus: 1               # Ray CPUs per replica; num_threads: torch threads (default: num_cpus)
    follow: false             # true: serve each newer checkpoint of the run as it appears (poll: follow_poll_s)
    kv_policy: {block_size: 16, num_blocks: 512, enable_prefix_caching: true}  # vllm on cpu: block_size 32
router: {policy: kv, imbalance_threshold: 4}
ingress: {mode: auto, num_replicas: 1, num_cpus: 0, max_ongoing_requests: 1000}
limits: {max_n: 16, max_stop: 16, max_total_tokens: 65536, requests_per_minute: 0}
```
It also holds every Ray Serve option of the deployments (replicas, resources, concurrency, health checks;
see `serve_options`). No torch or ray import here: the CLI and the app builder read it cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from perkunas_ray.config import check, check_resources, from_dict, is_int, load_mapping
from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.errors import ConfigError

ENGINES = ("native", "vllm")
VLLM_CPU_BLOCK_SIZE = 32  # the default kv_policy.block_size of engine vllm on cpu (the native engine's: 16)
DTYPES = ("fp32", "bf16", "fp16", "auto")
ROUTER_POLICIES = ("kv", "pow2")
INGRESS_MODES = ("auto", "separate", "combined")
DEFAULT_MAX_BODY_BYTES = 1 << 20
TOP_LEVEL_KEYS = ("models", "router", "ingress", "limits", "api_tokens", "max_body_bytes")
# What `serve run` / `serve deploy` may pass to the app builder (deployments.app:build_app).
APP_ARGS = ("registry", "model_dir", "api_tokens", "router", "imbalance_threshold", "max_body_bytes",
            "ingress_num_cpus")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass
class ModelSpec:
    """One served model: what to load, how, and its engine deployment's Serve options."""

    model_id: str
    source: str
    engine: str = "native"
    device: str = "cpu"
    dtype: str = "fp32"
    kv_policy: KVPolicy = dataclasses.field(default_factory=KVPolicy)
    num_replicas: int = 1
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = 32
    # Requests waiting at each caller for a replica slot; past it the API answers 503 with Retry-After.
    max_queued_requests: int = 64  # -1: unbounded
    retry_after_s: float = 1.0
    num_cpus: float = 1.0
    num_threads: int = 0  # torch CPU threads of each replica; 0: num_cpus, rounded down, at least 1
    num_gpus: float | None = None  # None: 1 on cuda, else 0
    # Custom Ray resources each replica takes ({name: amount}): which nodes serve the model on a cluster
    # (`ray start --resources '{"perkunas_engine": 1}'` on the nodes with the devices).
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    # A stream's tokens go from replica to ingress in one message per this many ms (the first token at once):
    # each message costs a Ray round trip and an SSE event whatever it carries. 0: one per engine step.
    # None: 50 behind a separate ingress, 0 with the routes in the engine replica (no hop to save; see `pacing`).
    stream_interval_ms: float | None = None
    # ... widened with load so that a replica's streams together send about this many messages a second (the
    # stack's CPU per message stays bounded as streams grow; at most 250 ms apart). 0: no cap. None: 100 / 0.
    stream_messages_per_s: float | None = None
    health_check_period_s: float = 5.0
    graceful_shutdown_timeout_s: float = 5.0
    chat_template: str | None = None  # None: the model's own (ours for run dirs)
    max_model_len: int | None = None
    seed: int = 0
    # Follow a training run: switch to each newer complete checkpoint of `source` (a run dir) as it appears.
    follow: bool = False
    follow_poll_s: float = 2.0

    def validate(self) -> ModelSpec:
        try:
            self._check_fields()
            self.kv_policy.validate("kv_policy")
        except ConfigError as exc:
            raise ConfigError(f"model {self.model_id!r}: {exc}") from None
        return self

    def _check_fields(self) -> None:
        check(isinstance(self.model_id, str) and bool(self.model_id.strip()), "id", "a non-empty string",
              self.model_id)
        check(isinstance(self.source, str) and bool(self.source), "source",
              "a path to a run dir or a Hugging Face package dir", self.source)
        check(self.engine in ENGINES, "engine", f"one of {', '.join(ENGINES)}", self.engine)
        check(isinstance(self.device, str) and (self.device == "cpu" or self.device.startswith("cuda")), "device",
              "cpu, cuda or cuda:N", self.device)
        check(self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}", self.dtype)
        check(self.dtype != "auto" or self.engine == "vllm", "dtype", "fp32, bf16 or fp16 for engine native",
              self.dtype)
        check(is_int(self.num_replicas) and self.num_replicas >= 1, "num_replicas", "an integer >= 1",
              self.num_replicas)
        check(self.autoscaling_config is None or isinstance(self.autoscaling_config, dict), "autoscaling_config",
              "a mapping (Serve's autoscaling_config)", self.autoscaling_config)
        check(is_int(self.max_ongoing_requests) and self.max_ongoing_requests >= 1, "max_ongoing_requests",
              "an integer >= 1", self.max_ongoing_requests)
        check(is_int(self.max_queued_requests) and (self.max_queued_requests >= 1 or self.max_queued_requests == -1),
              "max_queued_requests", "an integer >= 1, or -1 (unbounded)", self.max_queued_requests)
        check(_is_num(self.retry_after_s) and self.retry_after_s >= 0, "retry_after_s", "a number >= 0",
              self.retry_after_s)
        check(_is_num(self.num_cpus) and self.num_cpus >= 0, "num_cpus", "a number >= 0", self.num_cpus)
        check(is_int(self.num_threads) and self.num_threads >= 0, "num_threads",
              "an integer >= 0 (0: num_cpus threads)", self.num_threads)
        check(self.num_gpus is None or (_is_num(self.num_gpus) and self.num_gpus >= 0), "num_gpus",
              "a number >= 0", self.num_gpus)
        check_resources(self.resources, "resources", "num_cpus / num_gpus")
        check(self.stream_interval_ms is None or (_is_num(self.stream_interval_ms)
                                                  and 0 <= self.stream_interval_ms <= 1000), "stream_interval_ms",
              "a number of milliseconds in [0, 1000]", self.stream_interval_ms)
        check(self.stream_messages_per_s is None or (_is_num(self.stream_messages_per_s)
                                                     and self.stream_messages_per_s >= 0), "stream_messages_per_s",
              "a number >= 0 (0: no cap)", self.stream_messages_per_s)
        for name in ("health_check_period_s", "graceful_shutdown_timeout_s"):
            value = getattr(self, name)
            check(_is_num(value) and value > 0, name, "a number > 0", value)
        check(self.chat_template is None or (isinstance(self.chat_template, str) and bool(self.chat_template)),
              "chat_template", "a Jinja template string or null", self.chat_template)
        check(self.max_model_len is None or (is_int(self.max_model_len) and self.max_model_len > 0),
              "max_model_len", "a positive integer or null", self.max_model_len)
        check(is_int(self.seed), "seed", "an integer", self.seed)
        check(isinstance(self.follow, bool), "follow", "true or false", self.follow)
        check(not self.follow or self.engine == "native", "follow", "false for engine vllm (only the native engine "
              "follows a run)", self.follow)
        check(_is_num(self.follow_poll_s) and self.follow_poll_s > 0, "follow_poll_s", "a number > 0",
              self.follow_poll_s)

    @property
    def resolved_num_gpus(self) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if self.device.startswith("cuda") else 0.0

    @property
    def resolved_num_threads(self) -> int:
        """The torch CPU threads a replica runs with: what it was given, so it neither idles cores nor
        oversubscribes them (Ray sets OMP_NUM_THREADS only where no one did)."""
        return self.num_threads or max(1, int(self.num_cpus))

    def pacing(self, combined: bool = False) -> tuple[float, float]:
        """(stream interval in s, messages per s): the fields, or the defaults of where the routes run. Behind a
        separate ingress every message is a Ray call, so they are coalesced (50 ms, 100/s); in the engine replica
        a message is an SSE event, and each engine step goes out as it comes, as llama.cpp and vLLM stream."""
        interval_ms, per_s = (0.0, 0.0) if combined else (50.0, 100.0)
        if self.stream_interval_ms is not None:
            interval_ms = self.stream_interval_ms
        if self.stream_messages_per_s is not None:
            per_s = self.stream_messages_per_s
        return interval_ms / 1e3, per_s

    def policy_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.kv_policy)


@dataclasses.dataclass
class RouterConfig:
    """The request router of every engine deployment."""

    policy: str = "kv"  # kv: KV-aware prefix router | pow2: Serve's default power of two choices
    imbalance_threshold: int = 4  # skip the prefix-best replica when its load exceeds the least loaded by more
    optimistic_ttl_s: float = 3.0  # how long a routing decision counts as cached before the replica confirms it
    routing_stats_period_s: float = 0.5  # how often Serve polls replicas for their cache contents

    def validate(self) -> RouterConfig:
        check(self.policy in ROUTER_POLICIES, "router.policy", f"one of {', '.join(ROUTER_POLICIES)}", self.policy)
        check(is_int(self.imbalance_threshold) and self.imbalance_threshold >= 0, "router.imbalance_threshold",
              "an integer >= 0", self.imbalance_threshold)
        for name in ("optimistic_ttl_s", "routing_stats_period_s"):
            value = getattr(self, name)
            check(_is_num(value) and value > 0, f"router.{name}", "a number > 0", value)
        return self


@dataclasses.dataclass
class IngressConfig:
    """The HTTP ingress deployment's Serve options.

    mode: `separate` runs the OpenAI routes in their own deployment, which calls the engine replicas by handle
    (what several models, several replicas and the KV-aware router need); `combined` serves them from the one
    engine replica of the one model (no ingress -> engine hop per request and per stream message); `auto`:
    combined when the registry is one model with one fixed replica and one ingress replica, else separate.
    """

    mode: str = "auto"
    num_replicas: int = 1
    num_cpus: float = 0.0
    max_ongoing_requests: int = 1000  # generation requests in flight per replica; past it: 503 with Retry-After
    retry_after_s: float = 1.0
    graceful_shutdown_timeout_s: float = 5.0
    # Custom Ray resources of each ingress replica: keep it on the head (beside the HTTP proxy), off the nodes
    # whose loss it must survive.
    resources: dict[str, float] = dataclasses.field(default_factory=dict)

    def validate(self) -> IngressConfig:
        check(self.mode in INGRESS_MODES, "ingress.mode", " | ".join(INGRESS_MODES), self.mode)
        check(is_int(self.num_replicas) and self.num_replicas >= 1, "ingress.num_replicas", "an integer >= 1",
              self.num_replicas)
        check(_is_num(self.num_cpus) and self.num_cpus >= 0, "ingress.num_cpus", "a number >= 0", self.num_cpus)
        check(is_int(self.max_ongoing_requests) and self.max_ongoing_requests >= 1, "ingress.max_ongoing_requests",
              "an integer >= 1", self.max_ongoing_requests)
        check(_is_num(self.retry_after_s) and self.retry_after_s >= 0, "ingress.retry_after_s", "a number >= 0",
              self.retry_after_s)
        check(_is_num(self.graceful_shutdown_timeout_s) and self.graceful_shutdown_timeout_s > 0,
              "ingress.graceful_shutdown_timeout_s", "a number > 0", self.graceful_shutdown_timeout_s)
        check_resources(self.resources, "ingress.resources", "ingress.num_cpus")
        return self


@dataclasses.dataclass
class RequestLimits:
    """Bounds on one request, enforced by the ingress (400 naming the limit), and an optional rate limit."""

    max_n: int = 16  # completions per request
    max_stop: int = 16  # stop strings per request
    max_stop_chars: int = 256  # characters per stop string
    max_stop_token_ids: int = 64
    max_total_tokens: int = 65536  # n x max_tokens: what one request may make the engine generate
    max_json_depth: int = 32  # nesting of the request body
    requests_per_minute: int = 0  # per API token, across ingress replicas; 0: no rate limit; past it: 429
    burst: int = 0  # requests a token may send at once; 0: requests_per_minute

    def validate(self) -> RequestLimits:
        for f in dataclasses.fields(self):
            value, least = getattr(self, f.name), 0 if f.name in ("requests_per_minute", "burst") else 1
            check(is_int(value) and value >= least, f"limits.{f.name}", f"an integer >= {least}", value)
        return self


@dataclasses.dataclass
class Registry:
    models: dict[str, ModelSpec]
    router: RouterConfig = dataclasses.field(default_factory=RouterConfig)
    ingress: IngressConfig = dataclasses.field(default_factory=IngressConfig)
    limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)
    api_tokens: Any = None  # "name:token,..." or {name: token}; None: from KV_API_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def validate(self) -> Registry:
        self.router.validate()
        self.ingress.validate()
        self.limits.validate()
        if self.ingress.mode == "combined" and not self.one_replica_of_one_model():
            raise ConfigError("ingress.mode: combined serves the routes from the engine replica, so it takes one model "
                              "with num_replicas 1 (no autoscaling_config) and ingress.num_replicas 1; got "
                              f"{len(self.models)} model(s); use mode separate (or auto)")
        check(is_int(self.max_body_bytes) and self.max_body_bytes >= 1024, "max_body_bytes", "an integer >= 1024",
              self.max_body_bytes)
        return self

    def one_replica_of_one_model(self) -> bool:
        if len(self.models) != 1 or self.ingress.num_replicas != 1:
            return False
        spec = next(iter(self.models.values()))
        return spec.autoscaling_config is None and spec.num_replicas == 1

    @property
    def combined(self) -> bool:
        """Whether the routes run in the engine replica (see IngressConfig.mode)."""
        return self.ingress.mode == "combined" or (self.ingress.mode == "auto" and self.one_replica_of_one_model())


def _reject_unknown(raw: Mapping[str, Any], cls: type, what: str, exclude: frozenset[str] = frozenset()) -> None:
    known = sorted({f.name for f in dataclasses.fields(cls)} - exclude)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{what} unknown field {unknown[0]!r} (known: {', '.join(known)})")


def _model_spec(model_id: str, raw: Any, base_dir: Path | None) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"model {model_id!r}: expected a mapping of fields, got {type(raw).__name__}")
    raw = dict(raw)
    raw.pop("id", None)
    _reject_unknown(raw, ModelSpec, f"model {model_id!r}:", exclude=frozenset({"model_id"}))
    if "source" not in raw:
        raise ConfigError(f"model {model_id!r}: source is required (a run dir or a Hugging Face package dir)")
    policy_raw = raw.pop("kv_policy", None) or {}
    if not isinstance(policy_raw, Mapping):
        raise ConfigError(f"model {model_id!r}: kv_policy must be a mapping, got {policy_raw!r}")
    _reject_unknown(policy_raw, KVPolicy, f"model {model_id!r}: kv_policy has")
    if raw.get("engine") == "vllm" and raw.get("device", "cpu") == "cpu" and "block_size" not in policy_raw:
        # vLLM's CPU attention kernels take blocks of a multiple of 32 tokens (VLLMEngine refuses others).
        policy_raw = {**policy_raw, "block_size": VLLM_CPU_BLOCK_SIZE}
    source = raw.get("source")
    if isinstance(source, str) and base_dir is not None and source and not Path(source).expanduser().is_absolute():
        raw["source"] = str((base_dir / source).resolve())
    elif isinstance(source, str):
        raw["source"] = str(Path(source).expanduser())
    spec = ModelSpec(model_id=model_id, kv_policy=KVPolicy(**policy_raw), **raw)
    if spec.autoscaling_config is not None and "num_replicas" in raw:
        raise ConfigError(f"model {model_id!r}: give num_replicas or autoscaling_config, not both")
    return spec.validate()


def _model_pairs(raw_models: Any, where: str) -> list[tuple[str, Any]]:
    """`models` as (id, spec) pairs: from a mapping id -> spec, or a list of specs with an `id`."""
    if isinstance(raw_models, Mapping):
        return [(str(k), v) for k, v in raw_models.items()]
    if not isinstance(raw_models, list):
        raise ConfigError(f"{where}: models must be a mapping id -> spec or a list of specs with 'id'")
    for i, item in enumerate(raw_models):
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            raise ConfigError(f"{where}: models[{i}] needs an 'id' string")
    return [(item["id"], item) for item in raw_models]


def parse_registry(data: Any, base_dir: Path | None = None, where: str = "registry") -> Registry:
    """Validate a registry mapping (as read from JSON/YAML)."""
    if not isinstance(data, Mapping) or "models" not in data:
        raise ConfigError(f"{where}: expected a mapping with a 'models' key")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (known: {', '.join(TOP_LEVEL_KEYS)})")
    pairs = _model_pairs(data["models"], where)
    if not pairs:
        raise ConfigError(f"{where}: models is empty; register at least one model")
    models: dict[str, ModelSpec] = {}
    for model_id, raw in pairs:
        if model_id in models:
            raise ConfigError(f"{where}: model {model_id!r} is registered twice")
        models[model_id] = _model_spec(model_id, raw, base_dir)
    try:
        return Registry(models=models, router=from_dict(RouterConfig, data.get("router") or {}, "router"),
                        ingress=from_dict(IngressConfig, data.get("ingress") or {}, "ingress"),
                        limits=from_dict(RequestLimits, data.get("limits") or {}, "limits"),
                        api_tokens=data.get("api_tokens"),
                        max_body_bytes=data.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)).validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_registry(path: str | Path) -> Registry:
    """Read a registry from a .json, .yaml or .yml file (relative sources: from the file's directory)."""
    path = Path(path).expanduser()
    return parse_registry(load_mapping(path), base_dir=path.parent.resolve(), where=str(path))


def single_model_registry(model_dir: str | Path, model_id: str | None = None, **fields: Any) -> Registry:
    """The `--model-dir RUN` shortcut: one model named after its directory."""
    path = Path(model_dir).expanduser().resolve()
    return parse_registry({"models": {model_id or path.name: {"source": str(path), **fields}}})


def apply_app_args(registry: Registry, args: Mapping[str, Any]) -> Registry:
    """Apply the app builder's overrides (router, imbalance_threshold, max_body_bytes, ingress_num_cpus)."""
    if args.get("router") is not None:
        registry.router.policy = args["router"]
    if args.get("imbalance_threshold") is not None:
        registry.router.imbalance_threshold = args["imbalance_threshold"]
    if args.get("max_body_bytes") is not None:
        registry.max_body_bytes = args["max_body_bytes"]
    if args.get("ingress_num_cpus") is not None:
        registry.ingress.num_cpus = args["ingress_num_cpus"]
    return registry.validate()


def registry_from_app_args(args: Mapping[str, Any]) -> Registry:
    """The registry `serve run`'s args name (a registry file, relative to the working dir, or a model_dir),
    with their overrides applied."""
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ConfigError(f"build_app: unknown arg {unknown[0]!r} (known: {', '.join(APP_ARGS)})")
    if bool(args.get("registry")) == bool(args.get("model_dir")):
        raise ConfigError("build_app: give exactly one of registry (a JSON/YAML file) or model_dir (a run dir)")
    registry = load_registry(args["registry"]) if args.get("registry") else single_model_registry(args["model_dir"])
    return apply_app_args(registry, args)
