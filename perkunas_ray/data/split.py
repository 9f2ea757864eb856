"""Assign each document to train or validation by a keyed hash of its text: stable, order-free, no straddling."""

from __future__ import annotations

import hashlib

_HASH_SPACE = float(1 << 64)


def document_hash_fraction(text: str, seed: int) -> float:
    """A uniform-looking number in [0, 1) fixed by (seed, text); equal texts always land together."""
    key = seed.to_bytes(8, "little", signed=True)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") / _HASH_SPACE


def is_validation_document(text: str, val_fraction: float, seed: int) -> bool:
    """True for about `val_fraction` of documents, the same ones on every run with the same seed."""
    if val_fraction <= 0.0:
        return False
    if val_fraction >= 1.0:
        return True
    return document_hash_fraction(text, seed) < val_fraction
