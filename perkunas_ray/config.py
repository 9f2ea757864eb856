"""Dataclass configs, loaded from YAML/JSON once at the edge and validated with clear messages.

This module imports neither torch nor ray, so any process can read and check a config cheaply.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from perkunas_ray.errors import ConfigError

T = TypeVar("T")

DTYPES = ("auto", "fp32", "bf16", "fp16")  # train.dtype; auto: bf16 on a GPU that has it, else fp32 (stream/precision.py)
OPTIMIZERS = ("adamw", "lion", "adafactor")
LR_SCHEDULES = ("constant", "cosine", "wsd", "tokens")
CLIP_MODES = ("global", "shard", "none")
TRACE_STORAGES = ("cpu", "device", "secondary-device", "object-store")
PREFETCH_MODES = ("none", "cpu")
GUARD_EXHAUST = ("accept", "reject")
RESIDENT_MODES = ("auto", "on", "off")  # stream.resident


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON/YAML `true` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check(cond: bool, field: str, expected: str, got: Any) -> None:
    """Raise `ConfigError: <field> must be <expected>, got <got>` unless `cond`."""
    if not cond:
        raise ConfigError(f"{field} must be {expected}, got {got!r}")


def check_choice(value: str, field: str, choices: tuple[str, ...]) -> None:
    check(value in choices, field, f"one of {', '.join(choices)}", value)


@dataclasses.dataclass
class ModelConfig:
    """Shape and options of the decoder (Llama / Qwen3 family names)."""

    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 688
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    attn_softcap: float = 0.0  # 0 = off, then attention runs through SDPA
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    layers_per_shard: int = 1
    lm_head_chunk_tokens: int = 4096

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self, prefix: str = "model") -> ModelConfig:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len",
                     "layers_per_shard", "lm_head_chunk_tokens"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                  f"{prefix}.{name}", "a positive integer", value)
        check(self.d_model % self.n_heads == 0, f"{prefix}.n_heads", f"a divisor of d_model={self.d_model}",
              self.n_heads)
        check(self.n_heads % self.n_kv_heads == 0, f"{prefix}.n_kv_heads",
              f"a divisor of n_heads={self.n_heads}", self.n_kv_heads)
        check(self.head_dim % 2 == 0, f"{prefix}.n_heads", "such that d_model/n_heads is even (RoPE)",
              self.n_heads)
        check(self.rope_theta > 0, f"{prefix}.rope_theta", "> 0", self.rope_theta)
        check(self.norm_eps > 0, f"{prefix}.norm_eps", "> 0", self.norm_eps)
        check(self.attn_softcap >= 0, f"{prefix}.attn_softcap", ">= 0 (0 disables it)", self.attn_softcap)
        check(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "in [0, 1)", self.dropout)
        check(self.init_std > 0, f"{prefix}.init_std", "> 0", self.init_std)
        return self

    @property
    def num_stream_shards(self) -> int:
        return 2 + -(-self.n_layers // self.layers_per_shard)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    """Build dataclass `cls` from `data`, naming any unknown key (typos must not pass silently)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(cls(), key) if _has_default(fields[key]) else None  # type: ignore[call-arg]
        kwargs[key] = _coerce(value, default, f"{prefix}.{key}")
    return cls(**kwargs)  # type: ignore[call-arg]


def _has_default(field: dataclasses.Field) -> bool:  # type: ignore[type-arg]
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Accept ints for float fields and lists for tuple fields; reject other type mismatches."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        check(isinstance(value, bool), name, "true or false", value)
        return value
    if isinstance(default, float):
        check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        return float(value)
    if isinstance(default, int):
        check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        return value
    if isinstance(default, str):
        check(isinstance(value, str), name, "a string", value)
        return value
    if isinstance(default, tuple):
        check(isinstance(value, (list, tuple)), name, "a list", value)
        return tuple(value)
    if isinstance(default, dict):
        check(isinstance(value, dict), name, "a mapping", value)
        return dict(value)
    return value


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = path.suffix.lstrip(".").upper() or "YAML"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (nested) dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


@dataclasses.dataclass
class TrainConfig:
    """The optimisation loop, shared by the reference trainer and the streaming runtime."""

    data_dir: str = ""
    val_data_dir: str = ""  # empty: the validation split of data_dir
    seq_len: int = 0  # 0: take it from the data manifest
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    dtype: str = "auto"  # compute dtype (autocast); masters stay fp32. auto: bf16 on CUDA, fp32 on CPU
    master_weight_dtype: str = "fp32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    optimizer: str = "adamw"
    learning_rate: float = 6e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    grad_clip_mode: str = "global"
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_tokens: int = 0  # for lr_schedule=tokens
    decay_tokens: int = 0  # for lr_schedule=tokens
    min_lr_ratio: float = 0.1
    wsd_decay_fraction: float = 0.2  # share of max_steps spent decaying in WSD
    max_steps: int = 200
    save_every: int = 50
    validate_every: int = 50
    max_validation_batches: int = 20
    shuffle_train: bool = True
    seed: int = 1337
    activation_checkpointing: bool = False  # reference trainer: per-block recompute

    def validate(self, prefix: str = "train") -> TrainConfig:
        for name in ("micro_batch_size", "gradient_accumulation_steps", "max_steps"):
            value = getattr(self, name)
            check(value > 0, f"{prefix}.{name}", "> 0", value)
        for name in ("seq_len", "warmup_steps", "warmup_tokens", "decay_tokens", "save_every",
                     "validate_every", "max_validation_batches"):
            value = getattr(self, name)
            check(value >= 0, f"{prefix}.{name}", ">= 0", value)
        check_choice(self.dtype, f"{prefix}.dtype", DTYPES)
        check(self.master_weight_dtype == "fp32", f"{prefix}.master_weight_dtype", "fp32", self.master_weight_dtype)
        check_choice(self.optimizer, f"{prefix}.optimizer", OPTIMIZERS)
        check_choice(self.lr_schedule, f"{prefix}.lr_schedule", LR_SCHEDULES)
        check_choice(self.grad_clip_mode, f"{prefix}.grad_clip_mode", CLIP_MODES)
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"{prefix}.device",
              "auto, cpu, cuda or cuda:N", self.device)
        check(self.learning_rate > 0, f"{prefix}.learning_rate", "> 0", self.learning_rate)
        check(self.weight_decay >= 0, f"{prefix}.weight_decay", ">= 0", self.weight_decay)
        check(0 <= self.beta1 < 1, f"{prefix}.beta1", "in [0, 1)", self.beta1)
        check(0 <= self.beta2 < 1, f"{prefix}.beta2", "in [0, 1)", self.beta2)
        check(self.adam_eps > 0, f"{prefix}.adam_eps", "> 0", self.adam_eps)
        check(self.max_grad_norm >= 0, f"{prefix}.max_grad_norm", ">= 0 (0 disables clipping)", self.max_grad_norm)
        check(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        check(0 <= self.wsd_decay_fraction <= 1, f"{prefix}.wsd_decay_fraction", "in [0, 1]",
              self.wsd_decay_fraction)
        if self.lr_schedule == "tokens":
            check(self.decay_tokens > 0, f"{prefix}.decay_tokens", "> 0 when lr_schedule=tokens",
                  self.decay_tokens)
        return self


@dataclasses.dataclass
class StreamConfig:
    """Residency, prefetch, trace storage, shard writes and guarded replay of the streaming runtime."""

    max_resident_shards: int = 2
    max_resident_bytes: int = 0  # 0: no byte budget beyond max_resident_shards
    prefetch_shards: str = "cpu"
    prefetch_window: int = 2
    trace_storage: str = "cpu"
    trace_storage_device: str = ""  # for secondary-device, e.g. cuda:1
    async_shard_writes: bool = True
    max_pending_shard_writes: int = 4
    store_threads: int = 0  # the store's optimizer threads; 0: 1 beside CPU compute, the cores (<= 8) beside CUDA
    guarded_step_replay: bool = False
    guard_replay_max_replays: int = 6
    guard_replay_loss_tolerance: float = 0.004
    guard_replay_loss_tolerance_ratio: float = 0.0005
    guard_replay_lr_scales: tuple[float, ...] = (1.0, 0.85, 0.7, 0.5, 0.35, 0.25, 0.1)
    guard_replay_grad_norm_scales: tuple[float, ...] = (1.0, 0.85, 0.7, 0.5, 0.35, 0.25, 0.1)
    guard_replay_on_exhaust: str = "accept"
    # In process: every shard stays on the device and the optimizer runs there, when the whole training state fits
    # (auto: the planner's verdict on a CUDA device's budget; on: always; off: always stream). stream/residency.py
    resident: str = "auto"
    overlap_updates: bool = True  # in process: the store updates on a thread beside compute (off: inline)
    # ZeRO-Offload's one-step-delayed parameter update after the warm-up steps: step k's forward and backward read
    # the parameters before step k-1's update, which runs beside them. Not exact (in process only).
    delayed_update: bool = False
    delayed_update_warmup_steps: int = 10

    def validate(self, prefix: str = "stream") -> StreamConfig:
        check(self.max_resident_shards >= 2, f"{prefix}.max_resident_shards",
              ">= 2 (a shard and its neighbour during replay)", self.max_resident_shards)
        check(self.max_resident_bytes >= 0, f"{prefix}.max_resident_bytes", ">= 0", self.max_resident_bytes)
        # Staging shards on a second device is not built: accepting it would silently behave like cpu.
        check(self.prefetch_shards != "secondary-device", f"{prefix}.prefetch_shards",
              "none or cpu (secondary-device prefetch is not supported yet; stream.trace_storage can use a "
              "second device)", self.prefetch_shards)
        check_choice(self.prefetch_shards, f"{prefix}.prefetch_shards", PREFETCH_MODES)
        check(self.prefetch_window >= 0, f"{prefix}.prefetch_window", ">= 0", self.prefetch_window)
        check_choice(self.trace_storage, f"{prefix}.trace_storage", TRACE_STORAGES)
        check(self.max_pending_shard_writes > 0, f"{prefix}.max_pending_shard_writes", "> 0",
              self.max_pending_shard_writes)
        check(is_int(self.store_threads) and self.store_threads >= 0, f"{prefix}.store_threads",
              "an integer >= 0 (0: auto)", self.store_threads)
        check(self.guard_replay_max_replays >= 0, f"{prefix}.guard_replay_max_replays", ">= 0",
              self.guard_replay_max_replays)
        for name in ("guard_replay_lr_scales", "guard_replay_grad_norm_scales"):
            scales = getattr(self, name)
            check(len(scales) > 0 and all(0 < s <= 1 for s in scales), f"{prefix}.{name}",
                  "a non-empty list of scales in (0, 1]", scales)
        check_choice(self.guard_replay_on_exhaust, f"{prefix}.guard_replay_on_exhaust", GUARD_EXHAUST)
        check_choice(self.resident, f"{prefix}.resident", RESIDENT_MODES)
        check(self.delayed_update_warmup_steps >= 0, f"{prefix}.delayed_update_warmup_steps", ">= 0",
              self.delayed_update_warmup_steps)
        check(not (self.delayed_update and self.guarded_step_replay), f"{prefix}.delayed_update",
              "off with guarded_step_replay (a replay re-measures the update the delay has not applied yet)",
              self.delayed_update)
        check(not (self.delayed_update and self.resident == "on"), f"{prefix}.delayed_update",
              "off with stream.resident on (the delay hides a host optimizer; a resident run has none)",
              self.delayed_update)
        return self


@dataclasses.dataclass
class CheckpointConfig:
    """Where the run lives: the durable archive, the fast active copy, and how often to publish."""

    run_dir: str = ""
    active_run_dir: str = ""  # empty: RUN/active for a local run dir, a local temp dir for a URI
    durable_flush_every: int = 50
    keep_last_checkpoints: int = 2
    parent_run_dir: str = ""  # fine-tuning (perkunas sft): the run whose weights step 0 starts from
    parent_step: int = -1  # that run's checkpoint step; -1: its newest complete one

    def validate(self, prefix: str = "checkpoint") -> CheckpointConfig:
        check(self.durable_flush_every >= 0, f"{prefix}.durable_flush_every", ">= 0", self.durable_flush_every)
        check(self.keep_last_checkpoints >= 1, f"{prefix}.keep_last_checkpoints", ">= 1",
               self.keep_last_checkpoints)
        check(self.parent_step >= -1, f"{prefix}.parent_step", ">= 0, or -1 for the newest", self.parent_step)
        return self


AUTO = -1.0  # a Ray resource figure the builder picks from the device and the cluster


@dataclasses.dataclass
class RayConfig:
    """How training runs on Ray: the data-parallel workers (Ray Train), their resources, restarts, namespace."""

    namespace: str = "perkunas"
    num_workers: int = 1  # data-parallel compute workers; each takes its slice of every global batch
    worker_cpus: float = AUTO  # per worker; -1: 1 on CPU, 0 beside a GPU
    worker_gpus: float = AUTO  # per worker; -1: 1 when training on CUDA (train.device cuda, or auto on a GPU cluster)
    compute_threads: int = 0  # torch threads of each worker (0: all the node's cores)
    max_failures: int = 3  # group restarts from the newest durable checkpoint after a death; 0: fail at once
    # Placement on a cluster of several nodes: custom Ray resources ({name: amount}) that each helper actor
    # (shard store, prefetcher, flusher, ref board: the host tier, all on one node) and each worker takes, so
    # that they land on the nodes that offer them (`ray start --resources '{"perkunas_host": 1}'`). Empty
    # helper_resources: the helpers live on the driver's node; empty worker_resources: CPUs/GPUs decide.
    helper_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    worker_resources: dict[str, float] = dataclasses.field(default_factory=dict)

    # Older config files (run dirs' config.json) name the one compute actor's resources; they are the workers'
    # now. Its actor restarts (max_restarts) are gone: a restarted store would have lost the run's state.
    LEGACY_KEYS: ClassVar[dict[str, str]] = {"compute_num_cpus": "worker_cpus", "compute_num_gpus": "worker_gpus",
                                             "max_restarts": ""}

    def validate(self, prefix: str = "ray") -> RayConfig:
        check(bool(self.namespace), f"{prefix}.namespace", "a non-empty name", self.namespace)
        check(is_int(self.num_workers) and self.num_workers >= 1, f"{prefix}.num_workers", ">= 1",
              self.num_workers)
        check(self.max_failures >= -1, f"{prefix}.max_failures", ">= 0, or -1 for no limit", self.max_failures)
        for name in ("worker_cpus", "worker_gpus"):
            value = getattr(self, name)
            check(value == AUTO or value >= 0, f"{prefix}.{name}", ">= 0, or -1 for automatic", value)
        check(self.compute_threads >= 0, f"{prefix}.compute_threads", ">= 0 (0: all cores)", self.compute_threads)
        for name in ("helper_resources", "worker_resources"):
            check_resources(getattr(self, name), f"{prefix}.{name}")
        return self


# Resources Ray knows by their own options: the workers take them from worker_cpus / worker_gpus.
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_resources(value: Any, field: str, builtins_as: str = "ray.worker_cpus / ray.worker_gpus") -> None:
    """A {name: amount} map of custom Ray resources: names as `ray start --resources` takes them, amounts > 0
    (Ray refuses fractions above 1 that are not whole numbers)."""
    check(isinstance(value, dict), field, "a mapping of custom Ray resource names to amounts", value)
    for name, amount in value.items():
        check(isinstance(name, str) and bool(name.strip()) and name == name.strip(), field,
              "keyed by non-empty resource names", name)
        check(name not in BUILTIN_RESOURCES, f"{field}.{name}",
              f"a custom resource (give CPUs and GPUs as {builtins_as})", name)
        check(isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0, f"{field}.{name}",
              "a number > 0", amount)
        check(amount <= 1 or float(amount).is_integer(), f"{field}.{name}",
              "at most 1, or a whole number (Ray's rule for resource amounts)", amount)


# The root config's sections, in the order config files and flags list them.
SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "stream": StreamConfig,
                             "checkpoint": CheckpointConfig, "ray": RayConfig}


@dataclasses.dataclass
class RunConfig:
    """The root config of a training run."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def validate(self) -> RunConfig:
        for name in SECTIONS:
            getattr(self, name).validate()
        return self

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"config has unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        ray_section = data.get("ray") or {}
        if isinstance(ray_section, dict):
            renamed = {RayConfig.LEGACY_KEYS.get(k, k): v for k, v in ray_section.items()}
            data = {**data, "ray": {k: v for k, v in renamed.items() if k}}
        parts = {name: from_dict(kind, data.get(name) or {}, name) for name, kind in SECTIONS.items()}
        return cls(**parts)
