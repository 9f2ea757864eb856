"""Held-out loss, perplexity, bits per byte: windows, a uniform model's exact NLL, the model's own loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perkunas_ray.eval import EvalOptions, evaluate, model_scorer, score_heldout, text_rows
from perkunas_ray.eval.heldout import LossTotals, document_windows
from perkunas_ray.eval.rows import IGNORE, Row, pad_rows, row_log_likelihoods
from perkunas_ray.model.decoder import build_model
from tests.unit.test_eval_fixtures import (
    eval_config,
    eval_dirs,
    stories_file,
    two_step_run_dir,
    uniform_model,
)
from tests.unit.test_export_fixtures import tiny_tokenizer

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

EOS = 0


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    return eval_dirs(tmp_path_factory.mktemp("eval"))


def test_windows_are_non_overlapping_and_start_on_eos():
    windows = document_windows([11, 12, 13, 14, 15, 16, 17, 18, 19, 20], EOS, context_len=4)
    assert [w.inputs.tolist() for w in windows] == [[0, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
    assert [w.targets.tolist() for w in windows] == [[11, 12, 13, 14], [15, 16, 17, 18], [19, 20]]


def test_padding_is_ignored_and_rows_keep_their_order():
    rows = [Row(np.array([1, 2, 3]), np.array([2, 3, 4])), Row(np.array([5]), np.array([6]))]
    inputs, targets = pad_rows(rows)
    assert targets.tolist() == [[2, 3, 4], [6, IGNORE, IGNORE]]
    sums = row_log_likelihoods(rows, {"minus_target": lambda i, t: np.where(t == IGNORE, 0.0, -t.astype(float))},
                               batch_size=1, progress=False)
    assert sums["minus_target"].tolist() == [-9.0, -6.0]


def test_uniform_model_bits_per_byte_is_n_ln_v_over_bytes():
    cfg = eval_config()
    documents = ["Once upon a time there was a cat.", "The cat sat on a mat, and the dog ran to the park " * 3]
    tokenizer = tiny_tokenizer()
    num_tokens = sum(len(tokenizer.encode(d).ids) for d in documents)
    num_bytes = sum(len(d.encode("utf-8")) for d in documents)
    heldout = text_rows(documents, tokenizer, EOS, cfg.max_seq_len, "two docs")
    assert len(heldout.rows) > len(documents)  # the long document spans several windows
    totals = score_heldout(heldout, {"model": model_scorer(uniform_model(cfg))}, batch_size=3, progress=False)
    nll = num_tokens * math.log(cfg.vocab_size)
    assert totals["model"].num_tokens == num_tokens and totals["model"].num_bytes == num_bytes
    assert totals["model"].nll == pytest.approx(nll, rel=1e-6)
    assert totals["model"].loss == pytest.approx(math.log(cfg.vocab_size), rel=1e-6)
    assert totals["model"].perplexity == pytest.approx(cfg.vocab_size, rel=1e-5)
    assert totals["model"].bits_per_byte == pytest.approx(nll / num_bytes / math.log(2), rel=1e-6)


def test_loss_totals_by_hand():
    totals = LossTotals(nll=10 * math.log(4), num_tokens=10, num_bytes=20)
    assert (totals.loss, totals.perplexity, totals.bits_per_byte) == pytest.approx((math.log(4), 4.0, 1.0))


def test_model_scorer_agrees_with_the_models_own_loss():
    cfg = eval_config()
    model = build_model(cfg, seed=3).eval()
    block = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean_loss = float(model(block[:, :-1], block[:, 1:]))
    log_probs = model_scorer(model)(block[:, :-1].numpy(), block[:, 1:].numpy())
    assert -log_probs.sum() / log_probs.size == pytest.approx(mean_loss, rel=1e-5)


def test_evaluate_scores_token_shards_and_floors_on_the_same_tokens(run_and_data):
    run_dir, data_dir = run_and_data
    report = evaluate(run_dir, EvalOptions(hellaswag=None, prompts=(), progress=False))
    heldout = report.heldout
    assert heldout is not None and heldout.unit == "blocks" and str(data_dir) in heldout.description
    assert list(heldout.totals) == ["model", "bigram", "unigram", "uniform"]
    assert {t.num_tokens for t in heldout.totals.values()} == {heldout.num_tokens}
    assert heldout.totals["uniform"].loss == pytest.approx(math.log(512))
    assert heldout.totals["bigram"].loss < heldout.totals["unigram"].loss < heldout.totals["uniform"].loss
    assert "add-k smoothing, k = 0.1" in report.floors


def test_evaluate_step_selects_that_checkpoint(tmp_path):
    run_dir = two_step_run_dir(tmp_path / "run")
    text = stories_file(tmp_path / "held.txt", num_stories=3)
    options = dict(data=str(text), hellaswag=None, prompts=(), progress=False)
    newest = evaluate(run_dir, EvalOptions(**options))
    first = evaluate(run_dir, EvalOptions(step=0, **options))
    assert (newest.step, first.step) == (5, 0)
    assert newest.heldout.totals["model"].loss == pytest.approx(math.log(512), rel=1e-6)  # step 5 is uniform
    assert first.heldout.totals["model"].loss != pytest.approx(math.log(512), rel=1e-3)
    assert newest.notes == [] and newest.heldout.unit == "documents"
