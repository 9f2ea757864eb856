"""Chained, process-stable block hashes (vLLM's scheme) shared by the prefix cache and the KV-aware router."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

# The parent hash of a sequence's first block. A constant (not vLLM's random seed) so that every
# process, engine and router computes the same hashes for the same tokens.
ROOT_PARENT_HASH = 0


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """64-bit hash of one full block, chained with its parent's hash (sha256, truncated; never `hash()`)."""
    payload = struct.pack(f"<Q{len(token_ids)}Q", parent_hash, *token_ids)
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little")


def block_hashes(token_ids: Sequence[int], block_size: int, parent_hash: int = ROOT_PARENT_HASH) -> list[int]:
    """The chained hashes of the full blocks of `token_ids` (a trailing partial block has none)."""
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent_hash = hash_block(parent_hash, token_ids[start:start + block_size])
        hashes.append(parent_hash)
    return hashes
