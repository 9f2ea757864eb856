"""The resident fast path: when the whole training state fits the device, every shard and its optimizer live there.

Streaming exists for the model that does not fit. One that does would pay PCIe for nothing, so its fp32 masters,
their gradients and the optimizer state sit on the device, the store's own optimizer (fused AdamW on CUDA) steps
them there, and the step is the same streamed step with every shard load a no-op: the same code computes the same
numbers (bit for bit in fp32 on one device). The verdict is the planner's: resident when parameters, all their
gradients, the optimizer state and the streamed step's own peak (boundaries, saved activations, the head's chunk,
library workspaces: plan.predict) fit the budget. That peak also counts the staged shard copies a resident step
does not make, so the verdict errs towards streaming.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from perkunas_ray.checkpoint.format import load_shard
from perkunas_ray.config import RunConfig
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream.plan import host_bytes, predict
from perkunas_ray.stream.store import ShardStore


def resident_state_bytes(cfg: RunConfig, device_type: str) -> int:
    """What a resident step holds on a device of `device_type` at its peak (cfg.train.seq_len must be set)."""
    host = host_bytes(cfg)
    params = host["master_weights"]
    return 2 * params + host["optimizer_state"] + predict(cfg, device_type).peak_bytes


def device_budget(cfg: RunConfig, device: torch.device) -> int:
    """stream.max_resident_bytes, or with none the CUDA device's free memory now; 0 (no figure) elsewhere."""
    if cfg.stream.max_resident_bytes:
        return cfg.stream.max_resident_bytes
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    return 0


def choose_resident(cfg: RunConfig, device: torch.device) -> bool:
    """stream.resident: on, off, or auto (on a CUDA device whose budget holds the whole state; never on a CPU,
    where the store's memory is the compute's already)."""
    mode = cfg.stream.resident
    if mode != "auto":
        return mode == "on"
    if device.type != "cuda" or cfg.stream.delayed_update:  # the delay is for a host optimizer
        return False
    return resident_state_bytes(cfg, "cuda") <= device_budget(cfg, device)


def resident_compute_config(cfg: RunConfig) -> RunConfig:
    """The compute side's config on the resident path: nothing to stage, boundaries stay on the device, and
    updates run inline (they are kernels queued behind the backward on the same stream; a thread adds nothing)."""
    stream = dataclasses.replace(cfg.stream, max_resident_bytes=0, prefetch_shards="none", trace_storage="device",
                                 overlap_updates=False)
    return dataclasses.replace(cfg, stream=stream)


def device_store(cfg: RunConfig, ckpt_dir: Path, device: torch.device) -> ShardStore:
    """The shard store of checkpoint `ckpt_dir` with its masters (and so its optimizer) on `device`."""
    names = [s.name for s in stream_shard_specs(cfg.model)]
    shards = {n: {k: v.to(device) for k, v in load_shard(ckpt_dir, n, "shards", verify=False).items()} for n in names}
    optim = {n: load_shard(ckpt_dir, n, "optim", verify=False) for n in names}
    store = ShardStore(cfg, shards, optim)
    # A resumed optimizer's scalar slots (AdamW's step) load on the host; a fused step wants them beside its
    # parameter, where torch's own load_state_dict puts them for a fused optimizer.
    for opt in store.optims.values():
        if not opt.defaults.get("fused"):
            continue
        for param, state in opt.state.items():
            for slot, value in state.items():
                if torch.is_tensor(value) and value.device != param.device:
                    state[slot] = value.to(param.device)
    return store
