"""CUDA checks of the model, the reference trainer and the native engine (skipped without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from perkunas_ray.config import RunConfig, TrainConfig
from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.toy import toy_tokenizer
from perkunas_ray.model import build_model
from perkunas_ray.reference import ReferenceTrainer
from tests.conftest import tiny_config
from tests.model_helpers import generate_greedy


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_reference_trainer_steps_on_cuda(tiny_data_dir: Path, tmp_path: Path, dtype: str) -> None:
    train = TrainConfig(data_dir=str(tiny_data_dir), micro_batch_size=8, gradient_accumulation_steps=2,
                        learning_rate=3e-3, lr_schedule="constant", max_steps=20, save_every=0, validate_every=0,
                        max_validation_batches=2, device="cuda", dtype=dtype)
    cfg = RunConfig(model=tiny_config(vocab_size=400, max_seq_len=32), train=train).validate()
    result = ReferenceTrainer(cfg, tmp_path / "run", verbose=False).train()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    last = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()][-2]
    assert 0 < last["peak_bytes"] < 2**30  # the CUDA allocator's peak, not host RSS
    print(f"cuda {dtype}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, peak {last['peak_bytes']:,} B")


def test_native_engine_greedy_on_cuda_equals_reference_loop() -> None:
    cfg = tiny_config(vocab_size=512, max_seq_len=64)
    engine_cuda = NativeEngine(build_model(cfg, seed=1, device="cuda"), toy_tokenizer(), 0,
                               KVPolicy(block_size=4, num_blocks=64))
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26]]
    outs = engine_cuda.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    reference = build_model(cfg, seed=1).to("cuda").eval()
    for prompt, out in zip(prompts, outs, strict=True):
        expected = generate_greedy(reference, torch.tensor([prompt], device="cuda"), 12)
        assert out.outputs[0].token_ids == expected
