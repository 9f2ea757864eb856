"""Bits per byte in training validation: hand-computed cases, and the logged val_bpb equal to `perkunas eval`'s."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perkunas_ray.data import PackedTokenDataset, load_tokenizer
from perkunas_ray.data.text_bytes import bits_per_byte, num_text_bytes, validation_text_size
from perkunas_ray.eval import block_rows, load_eval_model, model_scorer, score_heldout
from perkunas_ray.reference import ReferenceTrainer
from perkunas_ray.telemetry.report import load_run, summarize
from tests.stream_helpers import small_config, small_data_dir, train_in_process
from tests.unit.test_reference_trainer import _cfg

pytestmark = pytest.mark.unit


def _validations(run_dir: Path) -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "validation"]


def test_bits_per_byte_and_text_bytes_by_hand(tiny_data_dir: Path) -> None:
    assert bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)  # 8 bits over 4 bytes
    assert math.isnan(bits_per_byte(1.0, 0))
    tokenizer = load_tokenizer(tiny_data_dir)
    ids = tokenizer.encode("héllo").ids
    assert num_text_bytes(tokenizer, ids) == 6  # é is two bytes in UTF-8
    assert num_text_bytes(tokenizer, [tokenizer.token_to_id("<|endoftext|>")]) == 0  # EOS decodes to no text
    data = PackedTokenDataset(tiny_data_dir, "val")
    num_tokens, num_bytes = validation_text_size(data, micro_batch_size=2, max_batches=1)
    blocks = data.blocks(range(2))
    assert num_tokens == 2 * (blocks.shape[1] - 1)
    assert num_bytes == sum(len(tokenizer.decode(b[1:].tolist(), skip_special_tokens=True).encode()) for b in blocks)


def test_reference_validation_bpb_equals_eval(tiny_data_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_data_dir, max_steps=3, max_validation_batches=2)
    ReferenceTrainer(cfg, tmp_path / "run", verbose=False).train()
    last = _validations(tmp_path / "run")[-1]
    loaded = load_eval_model(tmp_path / "run")
    data = PackedTokenDataset(tiny_data_dir, "val")
    # The same blocks validation read: max_validation_batches micro-batches, in order.
    heldout = block_rows(data, loaded.tokenizer, max_blocks=2 * cfg.train.micro_batch_size)
    totals = score_heldout(heldout, {"model": model_scorer(loaded.model)}, batch_size=8, progress=False)["model"]
    assert last["val_loss"] == pytest.approx(totals.loss, abs=1e-4)
    assert last["val_bpb"] == pytest.approx(totals.bits_per_byte, abs=1e-4)
    rows = dict(summarize(load_run(tmp_path / "run")))
    assert rows["validation bits per byte"].endswith(f"{last['val_bpb']:.4f} last")


def test_stream_loop_logs_and_prints_val_bpb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = small_data_dir(tmp_path / "data")
    cfg = small_config(data_dir, tmp_path / "run", max_steps=2)
    train_in_process(cfg, verbose=True)
    records = _validations(tmp_path / "run")
    assert len(records) == 2  # before the first step and after the last
    num_tokens, num_bytes = validation_text_size(PackedTokenDataset(data_dir, "val"), cfg.train.micro_batch_size, 2)
    for record in records:
        assert record["val_bpb"] == pytest.approx(record["val_loss"] * num_tokens / num_bytes / math.log(2))
    assert f"val bpb {records[-1]['val_bpb']:.4f}" in capsys.readouterr().out
