"""The memory planner: the compute side's peak, stage by stage, as the streaming runtime accounts it.

The figures mirror what StreamCompute tracks (stream/memory.py): the staged shards (and the one read
ahead when the budget leaves room), the gradient room reserved for the shard being replayed, the tied
embedding's gradient held from the head to the embedding, every boundary of the step not yet replayed,
the input gradients passed down, and one micro-batch's saved activations of the shard being replayed.
Saved activations per token come from the model's own operations (exact in fp32, SDPA without soft-capping; under
autocast every saved float is counted at the compute dtype's size, an approximation):
a block saves 4 x d_ff + 9 x d_model + n_heads + 2 floats per token (the norms' inputs and outputs,
q/k/v and their rotations, the attention output and log-sum-exp, the SwiGLU's four d_ff tensors).
On CUDA the runtime holds the allocator's figure against the budget, so two more terms count there: the
LM head's logits chunk and the cuBLAS workspaces (stream/memory.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.shards import ShardSpec, shard_num_bytes, shard_parameter_shapes, stream_shard_specs
from perkunas_ray.stream.memory import workspace_bytes
from perkunas_ray.stream.precision import activation_bytes

FLOAT = 4  # shards, gradients and master weights are fp32; so are activations in an fp32 step
TOKEN_ID = 8  # int64 token ids and targets
OPTIMIZER_SLOTS = {"adamw": 2, "lion": 1}  # fp32 tensors of state per parameter (adafactor: factored)
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, field: str = "--budget") -> int:
    """'8GiB', '512MiB', '2.5GB', '1000000' -> bytes."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"{field} must be a size like 8GiB, 512MiB or 2000000000, got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{field} must be > 0, got {text!r}")
    return int(value)


@dataclasses.dataclass
class Stage:
    """What the compute side holds at the peak moment of one shard's pass (bytes)."""

    shard: str
    phase: str  # forward | backward
    shards: int  # the staged shard itself (with a borrowed tied embedding)
    grads: int  # gradient room reserved for it, plus gradients in flight (tied head share, input gradients)
    boundaries: int
    activations: int  # one micro-batch's saved activations of this shard's replay
    head_chunk: int = 0  # the LM head's logits chunk in backward: allocator-visible on CUDA only
    workspace: int = 0  # the CUDA libraries' workspaces (cuBLAS), held for the whole run
    read_ahead: int = 0  # the next shard, staged beside this one when the budget leaves room

    @property
    def floor(self) -> int:
        return self.shards + self.grads + self.boundaries + self.activations + self.head_chunk + self.workspace

    @property
    def total(self) -> int:
        return self.floor + self.read_ahead


@dataclasses.dataclass
class MemoryPlan:
    stages: list[Stage]
    host_bytes: dict[str, int]  # what the shard store (and the object store) hold on the host

    @property
    def peak(self) -> Stage:
        return max(self.stages, key=lambda s: s.total)

    @property
    def peak_bytes(self) -> int:
        return self.peak.total

    @property
    def floor_bytes(self) -> int:
        """The least the step can run in (nothing read ahead)."""
        return max(s.floor for s in self.stages)


def block_activation_floats(cfg: RunConfig, num_layers: int) -> int:
    """Per token: what one shard of `num_layers` blocks saves for backward (its input is a boundary)."""
    m = cfg.model
    per_block = 4 * m.d_ff + 9 * m.d_model + m.n_heads + 2
    if m.qk_norm:
        per_block += 2 * (m.d_model + m.n_kv_heads * m.head_dim) + m.n_heads + m.n_kv_heads
    if m.attn_softcap > 0:  # the explicit path keeps (T, T) scores per head: scores, tanh, probs
        per_block += 3 * m.n_heads * cfg.train.seq_len
    # blocks after the first save their input too; RoPE's cos/sin tables are shared by the shard's blocks
    return num_layers * per_block + (num_layers - 1) * m.d_model + 2 * m.head_dim


def _shard_activation_bytes(cfg: RunConfig, spec: ShardSpec, act: int) -> int:
    t = cfg.train
    tokens = t.micro_batch_size * t.seq_len
    if spec.kind == "embed":
        return t.micro_batch_size * (t.seq_len + 1) * TOKEN_ID  # the embedding saves the step's id block
    if spec.kind == "head":  # final norm's output, its fp32 copy for the chunks, 1/rms, targets
        return tokens * (2 * cfg.model.d_model * act + FLOAT + TOKEN_ID)
    return tokens * block_activation_floats(cfg, len(spec.layer_ids)) * act


def head_chunk_bytes(cfg: RunConfig) -> int:
    """The head's fused cross-entropy (model/loss.py) holds two fp32 logits-sized tensors of one chunk at its
    peak: the logits and their log-softmax, which then becomes the logits' gradient in place."""
    tokens = cfg.train.micro_batch_size * cfg.train.seq_len
    return 2 * min(tokens, cfg.model.lm_head_chunk_tokens) * cfg.model.vocab_size * FLOAT


def host_bytes(cfg: RunConfig) -> dict[str, int]:
    """The shard store's master weights, optimizer state and stashed gradients; the object store's versions."""
    m, t = cfg.model, cfg.train
    params = count_parameters(m) * FLOAT
    if t.optimizer in OPTIMIZER_SLOTS:
        optim = OPTIMIZER_SLOTS[t.optimizer] * params
    else:  # adafactor: a row and a column factor per matrix, a full slot per vector
        optim = sum((shape[0] + shape[1] if len(shape) == 2 else shape[0]) * FLOAT
                    for spec in stream_shard_specs(m) for shape in shard_parameter_shapes(m, spec).values())
    largest = max(shard_num_bytes(m, s) for s in stream_shard_specs(m))
    grads = params if t.grad_clip_mode == "global" else largest  # global clipping waits for every shard's
    return {"master_weights": params, "optimizer_state": optim, "gradients": grads, "object_store_versions": params}


def predict(cfg: RunConfig, device_type: str = "cpu") -> MemoryPlan:
    """The stages of one steady-state step (the activation size is known, so read-ahead is budget-gated)."""
    m, t, s = cfg.model, cfg.train, cfg.stream
    if t.seq_len <= 0:
        raise ConfigError(f"train.seq_len must be > 0 for a memory plan, got {t.seq_len}")
    specs = stream_shard_specs(m)
    act = activation_bytes(t, device_type)  # what autocast saves; auto is bf16 on cuda (stream/precision.py)
    sizes = [shard_num_bytes(m, spec) for spec in specs]
    tied = m.vocab_size * m.d_model * FLOAT if m.tie_embeddings else 0
    entry = sizes[:-1] + [sizes[-1] + tied]  # a tied head stages the embedding weight it borrows
    # one shard's boundaries: fp32 whatever the compute dtype (the residual stream is)
    boundary = t.gradient_accumulation_steps * t.micro_batch_size * t.seq_len * m.d_model * FLOAT
    acts = [_shard_activation_bytes(cfg, spec, act) for spec in specs]
    nfwd = len(specs) - 1
    workspace = workspace_bytes(torch.device(device_type))
    stages = [Stage(specs[i].name, "forward", sizes[i], 0, (i + 1) * boundary, 0) for i in range(nfwd)]
    for i in range(nfwd, -1, -1):  # backward: the head, then the other shards in reverse
        head = i == nfwd
        held_tied = tied if i > 0 and not head else 0  # the head's tied share waits for the embedding
        # replay of the first micro-batch: input gradients from above stand in for the boundaries dropped so far
        grad_in = 0 if head else boundary
        stages.append(Stage(specs[i].name, "backward", entry[i], entry[i] + held_tied + grad_in,
                            i * boundary, acts[i], head_chunk_bytes(cfg) if head and device_type == "cuda" else 0))
        if i > 0:  # hand-off: this shard's gradients leave while the next one's room is reserved
            stages.append(Stage(specs[i].name, "hand-off", entry[i], max(entry[i], sizes[i - 1]) + tied + boundary,
                                (i - 1) * boundary, 0))
    for stage in stages:
        stage.workspace = workspace
    ahead = 0 if s.prefetch_shards == "none" else min(s.max_resident_shards - 1, s.prefetch_window)
    allowance = max(acts)
    decided: dict[str, int] = {}
    for index, stage in enumerate(stages):
        nxt = _next_entry(stages, index, entry, [spec.name for spec in specs])
        fits = not s.max_resident_bytes or stage.floor - stage.activations + allowance + nxt <= s.max_resident_bytes
        if stage.phase == "hand-off":  # what was read ahead during the replay is still staged
            stage.read_ahead = decided.get(stage.shard, 0)
        else:
            stage.read_ahead = decided[stage.shard] = nxt if ahead and fits else 0
    return MemoryPlan(stages, host_bytes(cfg))


def _next_entry(stages: list[Stage], index: int, entry: list[int], names: list[str]) -> int:
    """Bytes of the schedule entry after stage `index`'s (0 at the end of the step)."""
    following = [st for st in stages[index + 1:] if st.phase != "hand-off" and
                 (st.shard, st.phase) != (stages[index].shard, stages[index].phase)]
    return entry[names.index(following[0].shard)] if following else 0


def check_budget(cfg: RunConfig, budget: int, device_type: str = "cpu") -> MemoryPlan:
    """The plan, or a ConfigError naming the shard whose pass does not fit and what it needs."""
    plan = predict(cfg, device_type)
    worst = max(plan.stages, key=lambda st: st.floor)
    if worst.floor > budget:
        raise ConfigError(
            f"budget {budget:,} bytes is too small: shard {worst.shard} ({worst.phase}) needs {worst.floor:,} "
            f"bytes with nothing read ahead (parameters {worst.shards:,}, gradients {worst.grads:,}, boundaries "
            f"{worst.boundaries:,}, saved activations {worst.activations:,}"
            f"{f', LM-head chunk {worst.head_chunk:,}' if worst.head_chunk else ''}"
            f"{f', CUDA library workspace {worst.workspace:,}' if worst.workspace else ''}); lower --micro-batch-size, "
            f"--seq-len{', model.lm_head_chunk_tokens' if worst.head_chunk else ''} or --layers-per-shard, "
            f"or raise --budget")
    return plan


def with_shape(cfg: RunConfig, micro_batch_size: int | None = None, layers_per_shard: int | None = None) -> RunConfig:
    """A copy of `cfg` with another micro-batch size or shard layout."""
    model = cfg.model if layers_per_shard is None else dataclasses.replace(cfg.model, layers_per_shard=layers_per_shard)
    train = cfg.train if micro_batch_size is None else dataclasses.replace(cfg.train, micro_batch_size=micro_batch_size)
    return dataclasses.replace(cfg, model=model, train=train)


def largest_fitting(fits: Callable[[int], bool], start: int = 1, limit: int = 1 << 16) -> int:
    """The largest n in [start, limit] with fits(n) (fits is monotone: true, then false); 0 if none."""
    if not fits(start):
        return 0
    low, high = start, start
    while high < limit and fits(min(2 * high, limit)):
        low = high = min(2 * high, limit)
    high = min(2 * high, limit) if high < limit else limit + 1
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def largest_micro_batch(cfg: RunConfig, budget: int, device_type: str = "cpu") -> int:
    return largest_fitting(lambda b: predict(with_shape(cfg, micro_batch_size=b), device_type).peak_bytes <= budget)


def layouts(cfg: RunConfig, budget: int, device_type: str = "cpu") -> list[tuple[int, int, int]]:
    """(layers per shard, predicted peak at this micro-batch, largest micro-batch that fits) per layout."""
    rows = []
    for lps in range(1, cfg.model.n_layers + 1):
        if lps > 1 and -(-cfg.model.n_layers // lps) == -(-cfg.model.n_layers // (lps - 1)):
            continue  # the same number of block shards as a smaller layout, with a larger last shard
        shaped = with_shape(cfg, layers_per_shard=lps)
        rows.append((lps, predict(shaped, device_type).peak_bytes, largest_micro_batch(shaped, budget, device_type)))
    return rows
