"""Held-out loss, perplexity and bits per byte of raw text documents or of a prepared split's token blocks.

Raw text (`text_rows`): each document is tokenized with the model's own tokenizer and conditioned
on EOS, as training sees it (training packs documents with EOS between them, so the token before a
document's first token is EOS). Every token of the document is scored exactly once; the EOS after
it is not (lm-evaluation-harness' loglikelihood_rolling does the same). A document longer than the
context is cut into non-overlapping windows of `context_len` predicted tokens: window k reads
tokens [k L, k L + L) of `EOS + document` and predicts the next token at each position, so the
first token of a window sees only the last token of the window before (the windows of
loglikelihood_rolling; no stride, each token's context is what its window holds). The bytes are
the UTF-8 bytes of the documents (the tokenizers here are lossless: decode(encode(text)) == text).

Token shards (`block_rows`): each block of seq_len + 1 tokens is scored as training's validation
does: inputs block[:-1] predict targets block[1:]. The bytes are those of the decoded targets (a
special token such as EOS decodes to no bytes, though its loss counts).

Bits per byte = total negative log-likelihood (nats) / total UTF-8 bytes / ln 2, so models with
different tokenizers compare on the same text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from perkunas_ray.data import PackedTokenDataset
from perkunas_ray.data.text_bytes import bits_per_byte, num_text_bytes
from perkunas_ray.eval.rows import Row, Scorer, num_scored, row_log_likelihoods


@dataclass(frozen=True)
class HeldoutSet:
    """The rows to score and the amount of text they cover."""

    description: str
    rows: list[Row]
    num_documents: int
    unit: str  # what num_documents counts: documents (raw text) or blocks (token shards)
    num_bytes: int

    @property
    def num_tokens(self) -> int:
        return int(num_scored(self.rows).sum())


@dataclass(frozen=True)
class LossTotals:
    """Summed negative log-likelihood of a scorer over a held-out set, and what it was summed over."""

    nll: float  # nats
    num_tokens: int
    num_bytes: int

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nll / self.num_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll, self.num_bytes)

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "nll_nats": self.nll, "num_tokens": self.num_tokens, "num_bytes": self.num_bytes}


def document_windows(token_ids: list[int], eos_id: int, context_len: int) -> list[Row]:
    """Non-overlapping windows of `EOS + token_ids`, each predicting up to `context_len` tokens."""
    sequence = np.array([eos_id, *token_ids], dtype=np.int64)
    windows = []
    for start in range(0, len(token_ids), context_len):
        end = min(start + context_len, len(token_ids))  # the last input is the token before the last target
        windows.append(Row(inputs=sequence[start:end], targets=sequence[start + 1:end + 1]))
    return windows


def text_rows(documents: Iterable[str], tokenizer: Tokenizer, eos_id: int, context_len: int,
              description: str, max_documents: int = 0) -> HeldoutSet:
    """Windows of every non-empty document (the first `max_documents` of them; 0 = all)."""
    rows: list[Row] = []
    num_documents = num_bytes = 0
    for document in documents:
        token_ids = tokenizer.encode(document).ids
        if not token_ids:
            continue
        rows += document_windows(token_ids, eos_id, context_len)
        num_documents += 1
        num_bytes += len(document.encode("utf-8"))
        if num_documents == max_documents:
            break
    return HeldoutSet(description, rows, num_documents, "documents", num_bytes)


def block_rows(dataset: PackedTokenDataset, tokenizer: Tokenizer, max_blocks: int = 0) -> HeldoutSet:
    """One row per block of a prepared split (the first `max_blocks`; 0 = all)."""
    count = len(dataset) if max_blocks <= 0 else min(max_blocks, len(dataset))
    rows, num_bytes = [], 0
    for index in range(count):
        block = dataset.block(index).astype(np.int64)
        rows.append(Row(inputs=block[:-1], targets=block[1:]))
        num_bytes += num_text_bytes(tokenizer, block[1:])
    return HeldoutSet(f"{dataset.split} split of {dataset.data_dir}", rows, count, "blocks", num_bytes)


def score_heldout(heldout: HeldoutSet, scorers: dict[str, Scorer], batch_size: int,
                  progress: bool = True) -> dict[str, LossTotals]:
    """LossTotals of every scorer on the same rows."""
    sums = row_log_likelihoods(heldout.rows, scorers, batch_size, "held-out loss", progress)
    return {name: LossTotals(nll=-float(total.sum()), num_tokens=heldout.num_tokens, num_bytes=heldout.num_bytes)
            for name, total in sums.items()}
