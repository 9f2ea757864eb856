"""Scoring rows: (inputs, targets) token arrays, padded into batches, and the scorers that read them.

A row is what one forward pass sees: `inputs[i]` predicts `targets[i]`; a target of IGNORE is not
scored. Every scorer (the model, the uniform / unigram / bigram floors) maps a padded batch
(B, T) of inputs and targets to the log-probability of each target, 0 where it is IGNORE, so
held-out loss and HellaSwag score the model and its floors on exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

IGNORE = -100
PAD_INPUT = 0

# (inputs (B, T) int64, targets (B, T) int64 with IGNORE) -> log-probs (B, T) float64, 0 at IGNORE.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Row:
    """One scored sequence: equal-length token ids; targets hold IGNORE where nothing is scored."""

    inputs: np.ndarray
    targets: np.ndarray


def pad_rows(rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows to the longest one: inputs with PAD_INPUT, targets with IGNORE.

    Right padding leaves a causal model's scores of the real positions unchanged.
    """
    width = max(len(row.inputs) for row in rows)
    inputs = np.full((len(rows), width), PAD_INPUT, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for i, row in enumerate(rows):
        inputs[i, :len(row.inputs)] = row.inputs
        targets[i, :len(row.targets)] = row.targets
    return inputs, targets


def num_scored(rows: Sequence[Row]) -> np.ndarray:
    """Scored targets of every row."""
    return np.array([int(np.count_nonzero(row.targets != IGNORE)) for row in rows], dtype=np.int64)


def row_log_likelihoods(rows: Sequence[Row], scorers: dict[str, Scorer], batch_size: int,
                        description: str = "scoring", progress: bool = True) -> dict[str, np.ndarray]:
    """Per scorer, the summed log-probability (nats) of every row's scored targets, in the rows' order.

    Rows are batched shortest first, so a batch holds rows of similar length and little padding.
    """
    order = np.argsort([len(row.inputs) for row in rows], kind="stable")
    sums = {name: np.zeros(len(rows), dtype=np.float64) for name in scorers}
    # disable=None: tqdm hides the bar by itself when stderr is not a terminal.
    bar = tqdm(total=len(rows), desc=description, unit="row", disable=None if progress else True, leave=False)
    with bar:
        for start in range(0, len(rows), batch_size):
            picked = order[start:start + batch_size]
            inputs, targets = pad_rows([rows[i] for i in picked])
            for name, scorer in scorers.items():
                sums[name][picked] = scorer(inputs, targets).sum(axis=1)
            bar.update(len(picked))
    return sums
