"""The floors a model must beat: uniform (ln V), and add-k smoothed unigram and bigram models of the training tokens.

Fitted on the blocks of a prepared training split, exactly as training sees them: the unigram counts
every token of every block, the bigram counts every pair of neighbouring tokens inside a block.
Add-k (Lidstone) smoothing over the model's whole vocabulary V:

    unigram  P(w)     = (c(w) + k) / (N + k V)
    bigram   P(w | u) = (c(u, w) + k) / (c(u, .) + k V)

where N is the number of training tokens and c(u, .) the number of training pairs that start with u,
so every distribution sums to 1 and an unseen token keeps a probability > 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from perkunas_ray.data import PackedTokenDataset
from perkunas_ray.errors import ConfigError, DataError
from perkunas_ray.eval.rows import IGNORE, Scorer

DEFAULT_SMOOTHING_K = 0.1
_BLOCKS_PER_CHUNK = 4096  # bounds the memory of one counting pass


@dataclass(frozen=True)
class NgramCounts:
    """Unigram and bigram counts of a token corpus; bigrams are kept sparse (V^2 would not fit)."""

    vocab_size: int
    unigram: np.ndarray  # (V,) occurrences of each token
    pair_keys: np.ndarray  # sorted u * V + w of every pair seen
    pair_counts: np.ndarray  # occurrences of each key
    context_counts: np.ndarray  # (V,) pairs that start with each token

    @property
    def num_tokens(self) -> int:
        return int(self.unigram.sum())


def count_ngrams(chunks: Iterable[np.ndarray], vocab_size: int) -> NgramCounts:
    """Unigrams and in-block bigrams of chunks of blocks, each chunk an array (num_blocks, block_len)."""
    unigram = np.zeros(vocab_size, dtype=np.int64)
    keys, counts = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.int64)
        if chunk.size and int(chunk.max()) >= vocab_size:
            raise DataError(f"token id {int(chunk.max())} is outside the model's vocab of {vocab_size}")
        unigram += np.bincount(chunk.ravel(), minlength=vocab_size)
        chunk_keys, chunk_counts = np.unique((chunk[:, :-1] * vocab_size + chunk[:, 1:]).ravel(), return_counts=True)
        keys.append(chunk_keys)
        counts.append(chunk_counts)
    pair_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    pair_counts = np.bincount(inverse, weights=np.concatenate(counts), minlength=len(pair_keys)).astype(np.int64)
    context_counts = np.bincount(pair_keys // vocab_size, weights=pair_counts, minlength=vocab_size).astype(np.int64)
    return NgramCounts(vocab_size, unigram, pair_keys, pair_counts, context_counts)


def count_training_ngrams(train: PackedTokenDataset, vocab_size: int) -> NgramCounts:
    """count_ngrams over every block of a prepared split, a chunk of blocks at a time."""
    if len(train) == 0:
        raise DataError(f"{train.data_dir}: the {train.split!r} split has no blocks to fit the floors on")
    chunks = (train.blocks(range(start, min(start + _BLOCKS_PER_CHUNK, len(train))))
              for start in range(0, len(train), _BLOCKS_PER_CHUNK))
    return count_ngrams(chunks, vocab_size)


def _masked(log_probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.where(targets == IGNORE, 0.0, log_probs)


def uniform_scorer(vocab_size: int) -> Scorer:
    """Every token has probability 1 / V: a loss of ln V per token."""
    log_p = -math.log(vocab_size)
    return lambda inputs, targets: _masked(np.full(targets.shape, log_p), targets)


def unigram_scorer(counts: NgramCounts, k: float = DEFAULT_SMOOTHING_K) -> Scorer:
    _check_k(k)
    table = np.log((counts.unigram + k) / (counts.num_tokens + k * counts.vocab_size))
    return lambda inputs, targets: _masked(table[np.maximum(targets, 0)], targets)


def bigram_scorer(counts: NgramCounts, k: float = DEFAULT_SMOOTHING_K) -> Scorer:
    _check_k(k)
    vocab = counts.vocab_size

    # A sentinel key past every real one (u * V + w < V * V) keeps searchsorted inside the arrays.
    pair_keys = np.append(counts.pair_keys, vocab * vocab)
    pair_counts = np.append(counts.pair_counts, 0)

    def score(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        previous = inputs.astype(np.int64)
        keys = previous * vocab + np.maximum(targets, 0)
        found = np.searchsorted(pair_keys, keys)
        pair = np.where(pair_keys[found] == keys, pair_counts[found], 0)
        return _masked(np.log((pair + k) / (counts.context_counts[previous] + k * vocab)), targets)

    return score


def _check_k(k: float) -> None:
    if not k > 0:
        raise ConfigError(f"smoothing k must be > 0 (add-k smoothing), got {k}")
