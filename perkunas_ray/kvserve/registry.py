"""The model registry (JSON or YAML): model id -> source, engine, KV policy, placement; validated at load.

```yaml
models:
  tiny:                       # the OpenAI model id
    source: runs/tiny         # a training run dir or a Hugging Face package dir (relative: to this file)
    engine: native            # native | vllm
    device: cpu               # cpu | cuda | cuda:N
    dtype: fp32               # fp32 | bf16 | fp16 (vllm also: auto)
    num_replicas: 2           # or autoscaling_config: {min_replicas: 1, max_replicas: 4}
    kv_policy: {block_size: 16, num_blocks: 512, enable_prefix_caching: true}
router: {policy: kv, imbalance_threshold: 4}
```
No torch or ray import here: the CLI and the app builder read it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from perkunas_ray.config import is_int
from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.errors import ConfigError

ENGINES = ("native", "vllm")
DTYPES = ("fp32", "bf16", "fp16", "auto")
ROUTER_POLICIES = ("kv", "pow2")
DEFAULT_MAX_BODY_BYTES = 1 << 20


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass
class ModelSpec:
    """One served model."""

    model_id: str
    source: str
    engine: str = "native"
    device: str = "cpu"
    dtype: str = "fp32"
    kv_policy: KVPolicy = dataclasses.field(default_factory=KVPolicy)
    num_replicas: int = 1
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = 32
    num_cpus: float = 1.0
    num_gpus: float | None = None  # None: 1 on cuda, else 0
    chat_template: str | None = None  # None: the model's own (ours for run dirs)
    max_model_len: int | None = None
    seed: int = 0

    def validate(self) -> ModelSpec:
        where = f"model {self.model_id!r}"

        def check(cond: bool, field: str, expected: str, got: Any) -> None:
            if not cond:
                raise ConfigError(f"{where}: {field} must be {expected}, got {got!r}")

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
        check(_is_num(self.num_cpus) and self.num_cpus >= 0, "num_cpus", "a number >= 0", self.num_cpus)
        check(self.num_gpus is None or (_is_num(self.num_gpus) and self.num_gpus >= 0), "num_gpus",
              "a number >= 0", self.num_gpus)
        check(self.chat_template is None or (isinstance(self.chat_template, str) and bool(self.chat_template)),
              "chat_template", "a Jinja template string or null", self.chat_template)
        check(self.max_model_len is None or (is_int(self.max_model_len) and self.max_model_len > 0),
              "max_model_len", "a positive integer or null", self.max_model_len)
        check(is_int(self.seed), "seed", "an integer", self.seed)
        try:
            self.kv_policy.validate("kv_policy")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return self

    @property
    def resolved_num_gpus(self) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if self.device.startswith("cuda") else 0.0

    def policy_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.kv_policy)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kv_policy"] = self.policy_dict()
        return data


@dataclasses.dataclass
class RouterConfig:
    """The request router of every engine deployment."""

    policy: str = "kv"  # kv: KV-aware prefix router | pow2: Serve's default power of two choices
    imbalance_threshold: int = 4  # skip the prefix-best replica when its load exceeds the least loaded by more
    optimistic_ttl_s: float = 3.0  # how long a routing decision counts as cached before the replica confirms it
    routing_stats_period_s: float = 0.5  # how often Serve polls replicas for their cache contents

    def validate(self) -> RouterConfig:
        if self.policy not in ROUTER_POLICIES:
            raise ConfigError(f"router.policy must be one of {', '.join(ROUTER_POLICIES)}, got {self.policy!r}")
        if not is_int(self.imbalance_threshold) or self.imbalance_threshold < 0:
            raise ConfigError(f"router.imbalance_threshold must be an integer >= 0, got {self.imbalance_threshold!r}")
        for name in ("optimistic_ttl_s", "routing_stats_period_s"):
            value = getattr(self, name)
            if not _is_num(value) or value <= 0:
                raise ConfigError(f"router.{name} must be a number > 0, got {value!r}")
        return self


@dataclasses.dataclass
class Registry:
    models: dict[str, ModelSpec]
    router: RouterConfig = dataclasses.field(default_factory=RouterConfig)
    api_tokens: Any = None  # "name:token,..." or {name: token}; None: from KV_API_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    path: str | None = None

    def get(self, model_id: str) -> ModelSpec | None:
        return self.models.get(model_id)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _model_spec(model_id: str, raw: Any, base_dir: Path | None) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"model {model_id!r}: expected a mapping of fields, got {type(raw).__name__}")
    raw = dict(raw)
    raw.pop("id", None)
    allowed = _fields(ModelSpec) - {"model_id"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"model {model_id!r}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    if "source" not in raw:
        raise ConfigError(f"model {model_id!r}: source is required (a run dir or a Hugging Face package dir)")
    policy_raw = raw.pop("kv_policy", None) or {}
    if not isinstance(policy_raw, Mapping):
        raise ConfigError(f"model {model_id!r}: kv_policy must be a mapping, got {policy_raw!r}")
    unknown = sorted(set(policy_raw) - _fields(KVPolicy))
    if unknown:
        raise ConfigError(f"model {model_id!r}: kv_policy has unknown field {unknown[0]!r} "
                          f"(known: {', '.join(sorted(_fields(KVPolicy)))})")
    source = raw.get("source")
    if isinstance(source, str) and base_dir is not None and source and not Path(source).expanduser().is_absolute():
        raw["source"] = str((base_dir / source).resolve())
    elif isinstance(source, str):
        raw["source"] = str(Path(source).expanduser())
    spec = ModelSpec(model_id=model_id, kv_policy=KVPolicy(**policy_raw), **raw)
    if spec.autoscaling_config is not None and "num_replicas" in raw:
        raise ConfigError(f"model {model_id!r}: give num_replicas or autoscaling_config, not both")
    return spec.validate()


def parse_registry(data: Any, base_dir: Path | None = None, path: str | None = None) -> Registry:
    """Validate a registry mapping (as read from JSON/YAML)."""
    where = path or "registry"
    if not isinstance(data, Mapping) or "models" not in data:
        raise ConfigError(f"{where}: expected a mapping with a 'models' key")
    unknown = sorted(set(data) - {"models", "router", "api_tokens", "max_body_bytes"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} "
                          "(known: models, router, api_tokens, max_body_bytes)")
    raw_models = data["models"]
    if isinstance(raw_models, list):
        pairs = []
        for i, item in enumerate(raw_models):
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                raise ConfigError(f"{where}: models[{i}] needs an 'id' string")
            pairs.append((item["id"], item))
    elif isinstance(raw_models, Mapping):
        pairs = [(str(k), v) for k, v in raw_models.items()]
    else:
        raise ConfigError(f"{where}: models must be a mapping id -> spec or a list of specs with 'id'")
    if not pairs:
        raise ConfigError(f"{where}: models is empty; register at least one model")
    models: dict[str, ModelSpec] = {}
    for model_id, raw in pairs:
        if model_id in models:
            raise ConfigError(f"{where}: model {model_id!r} is registered twice")
        models[model_id] = _model_spec(model_id, raw, base_dir)
    router_raw = data.get("router") or {}
    if not isinstance(router_raw, Mapping):
        raise ConfigError(f"{where}: router must be a mapping, got {router_raw!r}")
    unknown = sorted(set(router_raw) - _fields(RouterConfig))
    if unknown:
        raise ConfigError(f"{where}: router has unknown field {unknown[0]!r}")
    max_body = data.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    if not is_int(max_body) or max_body < 1024:
        raise ConfigError(f"{where}: max_body_bytes must be an integer >= 1024, got {max_body!r}")
    return Registry(models=models, router=RouterConfig(**router_raw).validate(), api_tokens=data.get("api_tokens"),
                    max_body_bytes=max_body, path=path)


def load_registry(path: str | Path) -> Registry:
    """Read a registry from a .json, .yaml or .yml file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model registry {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"model registry {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{exc}") from None
    return parse_registry(data, base_dir=path.parent.resolve(), path=str(path))


def single_model_registry(model_dir: str | Path, model_id: str | None = None, **fields: Any) -> Registry:
    """The `--model-dir RUN` shortcut: one model named after its directory."""
    path = Path(model_dir).expanduser().resolve()
    return parse_registry({"models": {model_id or path.name: {"source": str(path), **fields}}})
