"""Uniform, unigram and bigram floors: add-k smoothed probabilities on a toy corpus, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perkunas_ray.errors import ConfigError
from perkunas_ray.eval import bigram_scorer, count_ngrams, uniform_scorer, unigram_scorer
from perkunas_ray.eval.rows import IGNORE

pytestmark = pytest.mark.unit

V = 5
K = 0.5
# Two training blocks. Unigram counts: 0:1 1:4 2:2 3:1 4:0 (N = 8).
# In-block pairs: (0,1) (1,2) (2,1) | (2,1) (1,1) (1,3): c(1,.) = 3, c(2,.) = 2, c(0,.) = 1, c(3,.) = c(4,.) = 0.
TRAIN = np.array([[0, 1, 2, 1], [2, 1, 1, 3]])
# Held-out: inputs predict targets; the last position is padding.
INPUTS = np.array([[1, 2, 4, 0]])
TARGETS = np.array([[2, 1, 0, IGNORE]])


def test_counts():
    counts = count_ngrams([TRAIN], V)
    assert counts.unigram.tolist() == [1, 4, 2, 1, 0] and counts.num_tokens == 8
    assert counts.context_counts.tolist() == [1, 3, 2, 0, 0]
    assert dict(zip(counts.pair_keys.tolist(), counts.pair_counts.tolist(), strict=True)) == {
        0 * V + 1: 1, 1 * V + 2: 1, 2 * V + 1: 2, 1 * V + 1: 1, 1 * V + 3: 1}


def test_counts_add_up_across_chunks():
    whole, split = count_ngrams([TRAIN], V), count_ngrams([TRAIN[:1], TRAIN[1:]], V)
    assert whole.pair_keys.tolist() == split.pair_keys.tolist()
    assert whole.pair_counts.tolist() == split.pair_counts.tolist()


def test_unigram_by_hand():
    denominator = 8 + K * V
    expected = [math.log((2 + K) / denominator), math.log((4 + K) / denominator), math.log((1 + K) / denominator), 0]
    assert unigram_scorer(count_ngrams([TRAIN], V), K)(INPUTS, TARGETS)[0].tolist() == pytest.approx(expected)


def test_bigram_by_hand():
    # P(2|1) = (1 + k) / (3 + kV); P(1|2) = (2 + k) / (2 + kV); P(0|4), 4 never starts a pair = k / kV = 1/V.
    expected = [math.log((1 + K) / (3 + K * V)), math.log((2 + K) / (2 + K * V)), math.log(1 / V), 0]
    assert bigram_scorer(count_ngrams([TRAIN], V), K)(INPUTS, TARGETS)[0].tolist() == pytest.approx(expected)


def test_bigram_distributions_sum_to_one():
    scorer = bigram_scorer(count_ngrams([TRAIN], V), K)
    for previous in range(V):
        probs = np.exp(scorer(np.full((1, V), previous), np.arange(V)[None]))
        assert probs.sum() == pytest.approx(1.0)


def test_uniform_is_ln_v():
    assert uniform_scorer(V)(INPUTS, TARGETS)[0].tolist() == pytest.approx([-math.log(V)] * 3 + [0])


def test_k_must_be_positive():
    with pytest.raises(ConfigError, match="smoothing k must be > 0"):
        unigram_scorer(count_ngrams([TRAIN], V), 0.0)
