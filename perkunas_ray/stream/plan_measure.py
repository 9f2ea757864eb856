"""The planner's checks: real streamed steps in this process and the peak the runtime itself reports; the store's
update rate on this machine.

On CPU the figure is MemoryTracker's tracked peak, on CUDA the allocator's; both are what the runtime
holds against stream.max_resident_bytes. The weights are freshly initialised and the tokens random:
memory does not depend on their values.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from perkunas_ray.config import RunConfig
from perkunas_ray.model.shards import shard_num_bytes, stream_shard_specs
from perkunas_ray.stream.compute import StreamCompute
from perkunas_ray.stream.interface import UpdatePlan
from perkunas_ray.stream.optimizers import build_optimizer
from perkunas_ray.stream.plan import largest_fitting, with_shape
from perkunas_ray.stream.store import ShardStore, init_shard
from perkunas_ray.stream.store_step import step_tasks
from perkunas_ray.stream.store_threads import UpdatePool

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


def measure_update_rate(cfg: RunConfig, threads: int, steps: int = 3) -> float:
    """Parameters per second of the store's update (clipping multiply and optimizer step) on `threads` threads,
    over the model's largest block shard (the rate is per parameter: one shard measures it without the whole model's
    memory). torch's intra-op threads are 1 meanwhile, as in the store actor."""
    spec = max((s for s in stream_shard_specs(cfg.model) if s.kind == "blocks"),
               key=lambda s: shard_num_bytes(cfg.model, s))
    params = {k: torch.nn.Parameter(v) for k, v in init_shard(cfg, spec.name, cfg.train.seed).items()}
    optimizer = build_optimizer(params.items(), cfg.train)
    gen = torch.Generator().manual_seed(0)
    grads = {p: torch.randn(p.shape, generator=gen).mul_(1e-3) for p in params.values()}
    coef = torch.tensor(1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = UpdatePool(threads)
    times = []
    try:
        for _ in range(steps + 1):  # the first allocates the optimizer state
            start = time.perf_counter()
            pool.run(step_tasks(optimizer, grads, coef, 1.0))
            times.append(time.perf_counter() - start)
    finally:
        pool.close()
        torch.set_num_threads(before)
    return sum(p.numel() for p in params.values()) / statistics.median(times[1:])
