"""Pick the narrowest unsigned integer dtype that holds every token id of a vocabulary."""

from __future__ import annotations

import numpy as np

from perkunas_ray.errors import DataError

# int32: SFT blocks, whose negative values mark untrained targets (see stream/batch.py)
SUPPORTED_TOKEN_DTYPES = ("uint16", "uint32", "int32")


def choose_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when ids fit (vocab_size <= 65536), uint32 up to 2**32, otherwise DataError."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise DataError(f"vocab size must be a positive integer, got {vocab_size!r}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"vocab size {vocab_size} is too large for token shards: ids must fit uint32 "
                    f"(vocab size <= {1 << 32})")
