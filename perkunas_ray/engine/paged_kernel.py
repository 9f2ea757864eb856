"""The C++ decode-attention kernel over the paged KV store (csrc/paged_decode_attention.cpp), built on first use.

PyTorch compiles it with the machine's C++ compiler the first time a process asks (about 30 s on 2 cores) and
keeps the build in its extension cache (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), so later
processes load it in well under a second. Without a compiler, or if the build fails, the engine says so once and
keeps the eager path (gather the blocks, then SDPA): same results, slower.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_decode_attention.cpp"

# (q (B, H, hd), keys, values (num_blocks, block_size, H_kv, hd), block_table (B, K), lengths (B,), scale) -> (B, H, hd)
DecodeKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


@functools.cache
def paged_decode_kernel() -> DecodeKernel | None:
    """The compiled kernel, or None (logged once) where it cannot be built here."""
    from torch.utils.cpp_extension import load_inline

    logger.info("loading the paged decode kernel (compiled on a machine's first use, about 30 s)")
    try:
        module = load_inline(name="perkunas_paged_decode_attention", cpp_sources=[SOURCE.read_text()],
                             functions=["paged_decode_attention"], extra_cflags=["-O3", "-fopenmp"],
                             extra_ldflags=["-fopenmp"])
    except Exception as exc:  # noqa: BLE001 - no compiler, no headers, a failed build: the eager path still works
        logger.warning("paged decode kernel unavailable (%s: %s); decode attention gathers blocks instead",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    return module.paged_decode_attention
