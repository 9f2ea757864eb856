"""The planner's check: real streamed steps in this process, and the peak the runtime itself reports.

On CPU the figure is MemoryTracker's tracked peak, on CUDA the allocator's; both are what the runtime
holds against stream.max_resident_bytes. The weights are freshly initialised and the tokens random:
memory does not depend on their values.
"""

from __future__ import annotations

import numpy as np
import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.interface import UpdatePlan
from perkunas_ray.stream.plan import largest_fitting, with_shape
from perkunas_ray.stream.store import ShardStore, init_shard

STEPS = 2  # the first step reads nothing ahead in backward (no activation size yet); the second is steady


def measure_peak(cfg: RunConfig, device: torch.device, steps: int = STEPS) -> int:
    """Peak bytes of the compute side over `steps` streamed steps (the steady-state step's figure)."""
    m, t = cfg.model, cfg.train
    names = [s.name for s in stream_shard_specs(m)]
    store = ShardStore(cfg, {n: init_shard(cfg, n, t.seed) for n in names})
    compute = StreamCompute(cfg, device)
    rng = np.random.default_rng(t.seed)
    batch = rng.integers(0, m.vocab_size, size=(t.gradient_accumulation_steps, t.micro_batch_size, t.seq_len + 1))
    plan = UpdatePlan(t.learning_rate, True, "none", 0.0)
    peak = 0
    try:
        for _ in range(steps):
            stats = compute.train_step(batch, store.shard_tensors, lambda name, grads, norms: None, plan)
            peak = stats.peak_bytes
    finally:
        store.close()
    return peak


def measured_largest_micro_batch(cfg: RunConfig, budget: int, device: torch.device, guess: int) -> int:
    """The largest micro-batch whose measured peak stays within `budget`: two steps' runs when the
    prediction `guess` is right (it fits, guess + 1 does not), a bisection from it otherwise."""
    def fits(micro_batch_size: int) -> bool:
        return measure_peak(with_shape(cfg, micro_batch_size=micro_batch_size), device) <= budget

    if guess >= 1 and fits(guess):
        return largest_fitting(fits, start=guess + 1) or guess
    return largest_fitting(fits, limit=max(1, guess - 1))
