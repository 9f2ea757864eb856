"""The reference trainer: schedules, learning, exact resume, clipping, and config/data mismatches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state, verify_checkpoint
from perkunas_ray.cli import main as cli_main
from perkunas_ray.config import RunConfig, TrainConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.reference import ReferenceTrainer
from perkunas_ray.stream.schedules import lr_at
from tests.conftest import tiny_config

pytestmark = pytest.mark.unit


def _cfg(data_dir: Path, **train: object) -> RunConfig:
    settings = dict(data_dir=str(data_dir), micro_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-3,
                    lr_schedule="constant", max_steps=6, save_every=0, validate_every=0, max_validation_batches=2,
                    device="cpu", seed=3)
    settings.update(train)
    return RunConfig(model=tiny_config(vocab_size=400, max_seq_len=32), train=TrainConfig(**settings)).validate()


def test_schedules_warmup_peak_and_floor() -> None:
    cfg = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(cfg, 0, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0) == pytest.approx(1.0)
    assert lr_at(cfg, 60, 0) == pytest.approx(0.55)
    assert lr_at(cfg, 110, 0) == pytest.approx(0.1)
    wsd = TrainConfig(learning_rate=1.0, min_lr_ratio=0.0, warmup_steps=0, max_steps=100, lr_schedule="wsd",
                      wsd_decay_fraction=0.2)
    assert [lr_at(wsd, s, 0) for s in (0, 79)] == [1.0, 1.0]
    assert lr_at(wsd, 89, 0) == pytest.approx(0.5) and lr_at(wsd, 99, 0) == pytest.approx(0.0)
    tok = TrainConfig(learning_rate=1.0, min_lr_ratio=0.4, lr_schedule="tokens", warmup_tokens=100, decay_tokens=1000)
    assert lr_at(tok, 0, 49) == pytest.approx(0.5)
    assert lr_at(tok, 0, 100) == pytest.approx(1.0) and lr_at(tok, 0, 5000) == pytest.approx(0.4)


def test_loss_falls_and_log_and_checkpoint_are_written(tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_data_dir, max_steps=30, validate_every=15)
    result = ReferenceTrainer(cfg, tmp_path / "run", verbose=False).train()
    assert result.step == 30
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 0.5
    assert result.val_losses[-1][1] < result.val_losses[0][1]
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, 31))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_bytes"} <= set(records[-2])
    verify_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert (tmp_path / "run" / "tokenizer.json").is_file()


@pytest.mark.parametrize("optimizer", ["adamw", "lion", "adafactor"])
def test_resume_continues_exactly(tiny_data_dir: Path, tmp_path: Path, optimizer: str) -> None:
    cfg = _cfg(tiny_data_dir, optimizer=optimizer, save_every=3, learning_rate=1e-3)
    straight = ReferenceTrainer(cfg, tmp_path / "a", verbose=False).train()
    ReferenceTrainer(cfg, tmp_path / "b", verbose=False).train(max_steps=3)
    resumed = ReferenceTrainer(cfg, tmp_path / "b", verbose=False)
    assert resumed.step == 3
    result = resumed.train()
    assert result.losses == straight.losses[3:]
    a = load_model_state(latest_checkpoint(tmp_path / "a"))
    b = load_model_state(latest_checkpoint(tmp_path / "b"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_global_clipping_scales_gradients(tiny_data_dir: Path, tmp_path: Path) -> None:
    trainer = ReferenceTrainer(_cfg(tiny_data_dir, max_grad_norm=0.01), tmp_path / "run", verbose=False)
    record = trainer.train_step()
    assert record["grad_norm"] > 0.01
    assert record["clip_scale"] == pytest.approx(0.01 / (record["grad_norm"] + 1e-6))


def test_activation_checkpointing_gives_the_same_step(tiny_data_dir: Path, tmp_path: Path) -> None:
    plain = ReferenceTrainer(_cfg(tiny_data_dir), tmp_path / "a", verbose=False).train_step()
    ckpt = ReferenceTrainer(_cfg(tiny_data_dir, activation_checkpointing=True), tmp_path / "b", verbose=False)
    record = ckpt.train_step()
    assert math.isclose(record["loss"], plain["loss"], rel_tol=1e-6)
    assert math.isclose(record["grad_norm"], plain["grad_norm"], rel_tol=1e-5)


def test_config_contradicting_the_manifest_is_refused(tiny_data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.seq_len is 64 but .*manifest.json was packed with seq_len 32"):
        ReferenceTrainer(_cfg(tiny_data_dir, seq_len=64), tmp_path / "run")
    small_vocab = _cfg(tiny_data_dir)
    small_vocab.model.vocab_size = 100
    with pytest.raises(ConfigError, match="model.vocab_size is 100 but .* vocab of 400"):
        ReferenceTrainer(small_vocab, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_names_the_missing_flag(tiny_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train-reference", "--data-dir", str(tiny_data_dir)]) == 2
    assert "--run-dir must be given" in capsys.readouterr().err
    assert cli_main(["train-reference", "--config", "no-such-profile", "--run-dir", "x"]) == 2
    assert "neither a file nor a profile" in capsys.readouterr().err
