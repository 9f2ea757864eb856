"""HellaSwag: lm-eval's preprocessing and token split, and acc / acc_norm / acc_token_mean on hand-made items."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from perkunas_ray.eval import HellaSwagItem, preprocess, score_hellaswag
from perkunas_ray.eval.hellaswag import Accuracy, chance_accuracy, ending_rows
from perkunas_ray.eval.hellaswag_data import item_from_record
from perkunas_ray.eval.rows import IGNORE
from tests.unit.test_export_fixtures import tiny_tokenizer

pytestmark = pytest.mark.unit

# Log-probability of each word, whatever came before it: the endings' scores follow by hand.
WORD_LOG_PROBS = {"ctx": -1.0, "aaaaaaaaaa": -3.0, "b": -1.4, "x": -0.9, "d": -10.0}


def word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORD_LOG_PROBS)}, unk_token="d"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def word_scorer(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    table = np.array(list(WORD_LOG_PROBS.values()))
    return np.where(targets == IGNORE, 0.0, table[np.maximum(targets, 0)])


# ll: A -3.0, B -2.8 (best sum); per character A -0.3 (best), B -0.93, C -0.5; per token C -0.9 (best).
ENDINGS = ("aaaaaaaaaa", "b b", "x x x x x", "d")
ACC_WINNER, ACC_NORM_WINNER, TOKEN_MEAN_WINNER = 1, 0, 2


def items(labels: list[int]) -> list[HellaSwagItem]:
    return [HellaSwagItem(context="ctx", endings=ENDINGS, label=label, form="derived") for label in labels]


def test_the_three_metrics_pick_different_endings_by_construction():
    result = score_hellaswag(items([1, 0, 2, 3, 1]), word_tokenizer(), {"words": word_scorer}, context_len=16,
                             batch_size=3, progress=False)["words"]
    assert result.log_likelihoods[0] == pytest.approx([-3.0, -2.8, -4.5, -10.0])
    assert result.predictions == {"acc": [ACC_WINNER] * 5, "acc_norm": [ACC_NORM_WINNER] * 5,
                                  "acc_token_mean": [TOKEN_MEAN_WINNER] * 5}
    assert {m: a.value for m, a in result.accuracy.items()} == {"acc": 0.4, "acc_norm": 0.2, "acc_token_mean": 0.2}
    assert result.accuracy["acc"].stderr == pytest.approx(math.sqrt(0.4 * 0.6 / 4))
    assert result.accuracy["acc"].num_items == 5


def test_stderr_and_chance():
    assert Accuracy(0.5, 101).stderr == pytest.approx(0.05)
    assert Accuracy(1.0, 1).stderr is None
    assert chance_accuracy(items([0, 1])) == 0.25


def test_ending_tokens_are_those_after_the_contexts_tokens():
    tokenizer = tiny_tokenizer()
    item = HellaSwagItem(context="The cat sat on the", endings=("mat.", "dog ran away."), label=0, form="derived")
    context_ids = tokenizer.encode(item.context).ids
    for ending, row in zip(item.endings, ending_rows(item, tokenizer, context_len=64), strict=True):
        whole = tokenizer.encode(item.context + " " + ending).ids
        assert row.inputs.tolist() + [row.targets[-1]] == context_ids + whole[len(context_ids):]
        scored = row.targets[row.targets != IGNORE].tolist()
        assert scored == whole[len(context_ids):]


def test_a_long_context_is_cut_from_the_left():
    tokenizer = tiny_tokenizer()
    item = HellaSwagItem(context="the cat " * 40, endings=("sat.", "ran."), label=0, form="derived")
    for ending, row in zip(item.endings, ending_rows(item, tokenizer, context_len=16), strict=True):
        continuation = tokenizer.encode(item.context + " " + ending).ids[len(tokenizer.encode(item.context).ids):]
        assert len(row.inputs) == 16
        assert row.targets[row.targets != IGNORE].tolist() == continuation


def test_lm_eval_preprocess():
    assert preprocess(" How to tie a tie [title] Cross the ends.  Pull [step] tight ") == \
        "How to tie a tie. Cross the ends. Pull tight"
    assert preprocess("a   b") == "a  b"  # one pass of "  " -> " ", as lm-eval
    assert preprocess("[header] Make a knot.") == " Make a knot."


def test_rowanz_records_capitalise_ctx_b_like_lm_eval():
    record = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
              "ctx": "unused", "endings": ["is using wrap.", "starts [title] pulling."], "label": "1"}
    item = item_from_record(record, "f:1")
    assert item.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert item.endings == ("is using wrap.", "starts. pulling.") and item.label == 1 and item.form == "rowanz"
    derived = item_from_record({"activity_label": "Roof", "ctx": "A man. he", "endings": ["a", "b"], "label": 0},
                               "f:2")
    assert derived.context == "Roof: A man. he" and derived.form == "derived"
