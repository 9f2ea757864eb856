"""HellaSwag zero-shot accuracy: each ending's log-likelihood after its context, three ways to pick the best.

Tokens as lm-evaluation-harness' loglikelihood requests: the continuation is " " + ending, its tokens
are those of encode(context + " " + ending) after the first len(encode(context)) tokens, the scored
sequence is encode(context) + those tokens, cut from the left to the model's context + 1 tokens,
with no BOS (the context's first token is not scored). Given the summed log-probability ll of each
ending's tokens:

    acc             argmax ll                                  (lm-eval "acc")
    acc_norm        argmax ll / len(ending) in characters      (lm-eval "acc_norm": the ending without
                                                                its leading space, as lm-eval's choices)
    acc_token_mean  argmax ll / number of ending tokens         (the mean log-prob per token that
                                                                karpathy's build-nanogpt reports)

Ties go to the first ending (numpy argmax). Each accuracy carries n and the standard error of a mean
of 0/1 scores, sqrt(p (1 - p) / (n - 1)) (lm-eval's mean_stderr).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from perkunas_ray.eval.hellaswag_data import HellaSwagItem
from perkunas_ray.eval.rows import IGNORE, Row, Scorer, num_scored, row_log_likelihoods

METRICS = ("acc", "acc_norm", "acc_token_mean")


@dataclass(frozen=True)
class Accuracy:
    value: float
    num_items: int

    @property
    def stderr(self) -> float | None:
        if self.num_items < 2:
            return None
        return math.sqrt(self.value * (1 - self.value) / (self.num_items - 1))

    def to_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "stderr": self.stderr, "n": self.num_items}


@dataclass(frozen=True)
class HellaSwagScores:
    """One scorer's results: the log-likelihood of every ending and the predictions of each metric."""

    log_likelihoods: list[list[float]]  # [item][ending]
    predictions: dict[str, list[int]]  # metric -> predicted ending per item
    accuracy: dict[str, Accuracy]  # metric -> accuracy


def ending_rows(item: HellaSwagItem, tokenizer: Tokenizer, context_len: int) -> list[Row]:
    """One row per ending, scoring only the ending's tokens."""
    context_ids = tokenizer.encode(item.context).ids
    rows = []
    for ending in item.endings:
        continuation = tokenizer.encode(item.context + " " + ending).ids[len(context_ids):]
        sequence = np.array(context_ids + continuation, dtype=np.int64)[-(context_len + 1):]
        num_scored_tokens = min(len(continuation), len(sequence) - 1)
        targets = sequence[1:].copy()
        targets[:len(targets) - num_scored_tokens] = IGNORE
        rows.append(Row(inputs=sequence[:-1], targets=targets))
    return rows


def chance_accuracy(items: Sequence[HellaSwagItem]) -> float:
    """The expected accuracy of picking an ending at random."""
    return float(np.mean([1 / len(item.endings) for item in items]))


def score_hellaswag(items: Sequence[HellaSwagItem], tokenizer: Tokenizer, scorers: dict[str, Scorer],
                    context_len: int, batch_size: int, progress: bool = True) -> dict[str, HellaSwagScores]:
    """Every scorer's HellaSwagScores on the same items (items may have different numbers of endings)."""
    rows = [row for item in items for row in ending_rows(item, tokenizer, context_len)]
    sums = row_log_likelihoods(rows, scorers, batch_size, "hellaswag", progress)
    tokens = num_scored(rows)
    labels = np.array([item.label for item in items])
    offsets = np.cumsum([0] + [len(item.endings) for item in items])
    results = {}
    for name, total in sums.items():
        predictions: dict[str, list[int]] = {metric: [] for metric in METRICS}
        for index, item in enumerate(items):
            ll = total[offsets[index]:offsets[index + 1]]
            predictions["acc"].append(int(np.argmax(ll)))
            predictions["acc_norm"].append(int(np.argmax(ll / np.array([len(e) for e in item.endings]))))
            predictions["acc_token_mean"].append(int(np.argmax(ll / tokens[offsets[index]:offsets[index + 1]])))
        accuracy = {metric: Accuracy(float(np.mean(np.array(picked) == labels)), len(items))
                    for metric, picked in predictions.items()}
        results[name] = HellaSwagScores([total[offsets[i]:offsets[i + 1]].tolist() for i in range(len(items))],
                                        predictions, accuracy)
    return results
