"""The planner's time model: from how many tokens a step the shard copies and the host optimizer hide behind compute.

A step does 6N + 12 L D T model FLOPs per token (N parameters, the head's matmul through the tied embedding; L layers,
D width, T sequence length; bench/train_sizes.py counts the same) plus the forward that backward replays (2N + 4 L D
T). With nothing to wait for, the device runs the model FLOPs at `mfu` of its peak for the compute dtype (the replay's
work is inside that figure); the forward pass takes its share of the hardware FLOPs (a quarter). Each step moves every shard to the device twice (forward, then backward; fp32 masters, which
autocast casts on the device; a tied head borrows the embedding) and every gradient back once (fp32), over a host
link of `link` bytes/s each way (the copy engines run both ways at once). The store steps every parameter once per
step at `update_rate` parameters/s.

With double-buffered copies on a side stream, a pass's copies hide when they take no longer than its compute: the
forward's uploads within the forward, the backward's uploads and gradient downloads (the slower direction) within
the replay and backward. The host update hides when it takes no longer than the step's compute, beside which it runs
(the backward, and the next step's forward). Every term is linear in tokens, so each has a threshold. The first
shard's upload and the last shard's update, which nothing overlaps, are left out: they matter only at few shards.
"""

from __future__ import annotations

import dataclasses
import math

from perkunas_ray.config import RunConfig
from perkunas_ray.model.decoder import count_parameters
from perkunas_ray.model.shards import shard_num_bytes, stream_shard_specs

FLOAT = 4


@dataclasses.dataclass(frozen=True)
class Device:
    """A GPU's dense peaks (spec sheet, TFLOP/s, no sparsity) and its practical host link (GB/s each way)."""

    name: str
    bf16_tflops: float  # fp16 too
    fp32_tflops: float  # plain fp32 matmuls (torch leaves TF32 off)
    link_gbps: float


# PCIe 5.0 x16 is 64 GB/s raw each way, ~50 for pinned copies; PCIe 4.0 x16 half of that.
DEVICES = {
    "h100-sxm": Device("H100 SXM", 989.0, 67.0, 50.0),
    "h100-pcie": Device("H100 PCIe", 756.0, 51.0, 50.0),
    "h200": Device("H200", 989.0, 67.0, 50.0),
    "a100": Device("A100 SXM", 312.0, 19.5, 25.0),
}
DEFAULT_DEVICE = "h100-sxm"
DEFAULT_MFU = 0.4
# The store's fused AdamW (with the clipping multiply) per thread: 103M parameters in 0.12 s on one core of an AMD
# EPYC (Milan) with torch's intra-op threads at 1 (`perkunas bench store`). Memory bandwidth bounds it: threads
# scale it until the socket's bandwidth is spent; `perkunas plan --measure-update` measures this machine's.
UPDATE_PARAMS_PER_S_PER_THREAD = 0.85e9


def flops_per_token(cfg: RunConfig) -> tuple[float, float]:
    """(model, hardware) FLOPs per trained token; hardware adds the forward replayed in backward."""
    m, seq = cfg.model, cfg.train.seq_len
    n = count_parameters(m)
    model = 6 * n + 12 * m.n_layers * m.d_model * seq
    return model, model + 2 * n + 4 * m.n_layers * m.d_model * seq


def copy_bytes(cfg: RunConfig) -> tuple[int, int, int]:
    """(forward uploads, backward uploads, gradient downloads) of one step, bytes."""
    m = cfg.model
    shards = sum(shard_num_bytes(m, s) for s in stream_shard_specs(m))
    tied = m.vocab_size * m.d_model * FLOAT if m.tie_embeddings else 0  # the head stages the embedding it borrows
    return shards + tied, shards + tied, count_parameters(m) * FLOAT


@dataclasses.dataclass
class StepTime:
    """One step's seconds by part, and the tokens a step from which each part hides behind compute."""

    tokens: int
    forward_s: float
    backward_s: float  # replay and backward
    forward_copy_s: float
    backward_copy_s: float  # the slower direction: uploads or gradient downloads
    update_s: float
    copy_hide_tokens: int
    update_hide_tokens: int
    model_flops: float  # of the step

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s

    @property
    def step_s(self) -> float:
        """With every overlap the model assumes: each pass as slow as its compute or its copies; the update beside."""
        passes = max(self.forward_s, self.forward_copy_s) + max(self.backward_s, self.backward_copy_s)
        return max(passes, self.update_s)

    @property
    def bound(self) -> str:
        if self.step_s == self.update_s and self.update_s > self.compute_s:
            return "host update"
        return "shard copies" if self.step_s > self.compute_s else "compute"


def step_time(cfg: RunConfig, peak_flops: float, mfu: float, link_bytes_per_s: float,
              update_params_per_s: float) -> StepTime:
    """The model above for `cfg`'s step (tokens: accumulation x micro-batch x seq_len)."""
    t = cfg.train
    tokens = t.gradient_accumulation_steps * t.micro_batch_size * t.seq_len
    model, hardware = flops_per_token(cfg)
    compute_per_token = model / (mfu * peak_flops)
    forward_per_token = compute_per_token * (hardware - model) / hardware  # the forward is the work replay repeats
    backward_per_token = compute_per_token - forward_per_token
    up_forward, up_backward, down = (b / link_bytes_per_s for b in copy_bytes(cfg))
    update_s = count_parameters(cfg.model) / update_params_per_s
    copy_hide = max(up_forward / forward_per_token, max(up_backward, down) / backward_per_token)
    return StepTime(tokens, forward_per_token * tokens, backward_per_token * tokens, up_forward,
                    max(up_backward, down), update_s, math.ceil(copy_hide),
                    math.ceil(update_s / (forward_per_token + backward_per_token)), model * tokens)
