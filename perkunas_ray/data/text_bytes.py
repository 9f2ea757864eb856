"""UTF-8 bytes of the text that token ids stand for: the denominator of bits per byte."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from perkunas_ray.data.cursor import iter_eval_batches
from perkunas_ray.data.dataset import PackedTokenDataset
from perkunas_ray.data.tokenizer import load_tokenizer


def num_text_bytes(tokenizer: Tokenizer, token_ids: Sequence[int] | np.ndarray) -> int:
    """Bytes of the decoded tokens; a special token such as EOS decodes to none (its loss still counts)."""
    ids = token_ids.tolist() if isinstance(token_ids, np.ndarray) else list(token_ids)
    return len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))


def validation_text_size(data: PackedTokenDataset, micro_batch_size: int, max_batches: int | None) -> tuple[int, int]:
    """(tokens, UTF-8 bytes) of the targets (block[1:]) of the batches `iter_eval_batches` yields for validation."""
    tokenizer = load_tokenizer(data.tokenizer_path)
    num_tokens = num_bytes = 0
    for batch in iter_eval_batches(data, micro_batch_size, max_batches):
        for row in batch:
            trained = row[1:][row[1:] >= 0]  # SFT blocks mark untrained targets negative (stream/batch.py)
            num_tokens += len(trained)
            num_bytes += num_text_bytes(tokenizer, trained)
    return num_tokens, num_bytes


def bits_per_byte(nll_nats: float, num_bytes: int) -> float:
    """Total negative log-likelihood (nats) of some text -> bits per byte of it (NaN when it has no bytes)."""
    return nll_nats / num_bytes / math.log(2) if num_bytes else float("nan")


class ValidationBitsPerByte:
    """Turns the mean validation loss over a fixed set of validation batches into bits per byte; the text of
    those batches is measured once, on first use."""

    def __init__(self, data: PackedTokenDataset, micro_batch_size: int, max_batches: int | None) -> None:
        self._args = (data, micro_batch_size, max_batches)
        self._size: tuple[int, int] | None = None

    def __call__(self, mean_loss: float) -> float:
        if self._size is None:
            self._size = validation_text_size(*self._args)
        num_tokens, num_bytes = self._size
        return bits_per_byte(mean_loss * num_tokens, num_bytes)
