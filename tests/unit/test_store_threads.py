"""The store's threaded optimizer step equals torch's own one-thread step bit for bit (AdamW, Lion, Adafactor; global
and shard clipping, guard-replay scaling, a checkpoint reload between steps), and stream.store_threads is validated."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.config import ModelConfig, RunConfig, StreamConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.shards import stream_shard_specs
from perkunas_ray.stream import store_step
from perkunas_ray.stream.optimizers import build_optimizer
from perkunas_ray.stream.store import ShardStore, init_shard
from perkunas_ray.stream.store_threads import MAX_AUTO_THREADS, resolve_store_threads

STEPS = 4  # the store is rebuilt from its checkpoint tensors after step 2
LRS = (3e-3, 2e-3, 1e-3, 5e-4)


def config(optimizer: str, clip_mode: str, store_threads: int) -> RunConfig:
    cfg = RunConfig()
    # d_model 40 and vocab 301: tensors that end in a partial piece and a partial SIMD step
    cfg.model = ModelConfig(vocab_size=301, d_model=40, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=72, max_seq_len=16,
                            layers_per_shard=1)
    t = cfg.train
    t.optimizer, t.grad_clip_mode, t.max_grad_norm, t.weight_decay = optimizer, clip_mode, 0.05, 0.1
    cfg.stream.store_threads = store_threads
    return cfg.validate()


def step_grads(cfg: RunConfig, step: int) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(100 + step)
    return {s.name: {k: torch.randn(v.shape, generator=gen) for k, v in init_shard(cfg, s.name, 0).items()}
            for s in stream_shard_specs(cfg.model)}


def torch_steps(cfg: RunConfig) -> dict[str, tuple[dict, dict]]:
    """Today's update, spelled out: torch's optimizer over each shard, clip_grad_norm_ in shard mode."""
    out = {}
    for spec in stream_shard_specs(cfg.model):
        params = {k: torch.nn.Parameter(v) for k, v in init_shard(cfg, spec.name, 0).items()}
        opt = build_optimizer(params.items(), cfg.train)
        for step, lr in enumerate(LRS):
            grads = step_grads(cfg, step)[spec.name]
            for k, p in params.items():
                p.grad = grads[k]
            if cfg.train.grad_clip_mode == "shard":
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.train.max_grad_norm)
            else:
                for p in params.values():
                    p.grad.mul_(torch.tensor(0.37, dtype=torch.float32))
            if step == 1:  # the guarded replay's grad-norm scale
                for p in params.values():
                    p.grad.mul_(0.5)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        names = {p: k for k, p in params.items()}
        out[spec.name] = ({k: p.detach() for k, p in params.items()},
                          {f"{names[p]}::{slot}": v for p, s in opt.state.items() for slot, v in s.items()})
    return out


def store_steps(cfg: RunConfig) -> dict[str, tuple[dict, dict]]:
    names = [s.name for s in stream_shard_specs(cfg.model)]
    store = ShardStore(cfg, {n: init_shard(cfg, n, 0) for n in names})
    clip = None if cfg.train.grad_clip_mode == "shard" else 0.37
    for step, lr in enumerate(LRS):
        if step == 2:  # a checkpoint reload: the state as the files hold it
            saved = {n: store.state_tensors(n) for n in names}
            store.close()
            store = ShardStore(cfg, {n: saved[n][0] for n in names}, {n: saved[n][1] for n in names})
        for name, grads in step_grads(cfg, step).items():
            store.put_grads(name, grads)
            if step == 1:  # a guarded step: update, restore, replay at half the gradients
                store.update(name, 9.0, clip, snapshot=True)
                store.restore([name])
                store.update(name, lr, clip, grad_scale=0.5, snapshot=True)
            else:
                store.update(name, lr, clip)
        store.commit()
    out = {n: store.state_tensors(n) for n in names}
    store.close()
    return out


@pytest.fixture
def one_intra_op_thread(monkeypatch):
    """One thread means one: torch's own intra-op threads off too; pieces of 64 elements, so every tensor is cut."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(store_step, "PIECE", 64)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("optimizer", ["adamw", "lion", "adafactor"])
@pytest.mark.parametrize("clip_mode", ["global", "shard"])
def test_threaded_store_equals_torch_one_thread_bit_for_bit(optimizer, clip_mode, one_intra_op_thread):
    expected = torch_steps(config(optimizer, clip_mode, 1))
    for threads in (1, 3):
        got = store_steps(config(optimizer, clip_mode, threads))
        for name, (params, state) in expected.items():
            assert got[name][0].keys() == params.keys() and got[name][1].keys() == state.keys()
            for key in params:
                assert torch.equal(got[name][0][key], params[key]), (threads, name, key)
            for key in state:
                assert torch.equal(got[name][1][key], state[key]), (threads, name, key)


def test_store_threads_is_validated_and_auto_follows_the_compute_device():
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match=r"stream\.store_threads must be an integer >= 0"):
            StreamConfig(store_threads=bad).validate()
    assert resolve_store_threads(0, "cpu") == 1 and resolve_store_threads(3, "cpu") == 3
    assert 1 <= resolve_store_threads(0, "cuda") <= MAX_AUTO_THREADS
