"""The engine's C++ CPU kernels (csrc/): decode attention over the paged KV store, RMSNorm, a few decodes' whole
forward up to the head in one call, the projection every fp32 linear of a step takes (weights packed into 16-column
panels) and greedy sampling's argmax, built on first use.

PyTorch compiles them with the machine's C++ compiler the first time a process asks (about 30 s on 2 cores) and
keeps the build in its extension cache (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), so later
processes load it in well under a second. Without a compiler, or if the build fails, the engine says so once and
keeps the eager paths (gather the blocks, then SDPA; PyTorch's rms_norm): same results, slower.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))  # one C++ unit; csrc/cpu_kernels.h declares what they share (any order)


# (q (B, H, hd), keys, values (num_blocks, block_size, H_kv, hd), block_table (B, K), lengths (B,), scale)
#   -> (B, H, hd), all fp32 but the int64 table and lengths
DecodeAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
RMSNormKernel = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (x (..., D), weight (D,), eps), fp32
# (ids (B,), embedding (V, D), positions (B,), cos, sin tables (P, hd), 11 weights per block (the 7 linears as
#  panels), key pools, value pools, slots (B,), block_table (B, K), lengths (B,), heads, eps, final norm (D,))
#  -> the final-normed hidden states (B, D); csrc/decode_layers.cpp says more
LinearRows = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x (M, n), panels, out) -> x @ weight.T
PackPanels = Callable[[torch.Tensor], torch.Tensor]  # weight (out, n) fp32 -> panels (ceil(out / 16), n, 16)
DecodeLayers = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor],
                         list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, int, float,
                         torch.Tensor], torch.Tensor]
ArgmaxRows = Callable[[torch.Tensor], list[int]]  # logits (S, V) fp32 -> each row's argmax, NaN counted as -inf


def csrc_digest() -> str:
    """A digest of every file in csrc/, header included: PyTorch's build cache sees only the .cpp text, so the
    extension's name carries it and an edit of the header alone still rebuilds."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


class CpuKernels(NamedTuple):
    paged_decode_attention: DecodeAttention
    rms_norm: RMSNormKernel
    decode_layers: DecodeLayers
    linear_rows: LinearRows
    pack_panels: PackPanels
    argmax_rows: ArgmaxRows


@functools.cache
def cpu_kernels() -> CpuKernels | None:
    """The compiled kernels, or None (logged once) where they cannot be built here."""
    from torch.utils.cpp_extension import load_inline

    logger.info("loading the engine's CPU kernels (compiled on a machine's first use, about 30 s)")
    try:
        module = load_inline(name=f"perkunas_cpu_kernels_{csrc_digest()}", cpp_sources=[path.read_text() for path in SOURCES],
                             functions=list(CpuKernels._fields), extra_cflags=["-O3", "-fopenmp"],
                             extra_ldflags=["-fopenmp"], extra_include_paths=[str(CSRC)])
    except Exception as exc:  # noqa: BLE001 - no compiler, no headers, a failed build: the eager paths still work
        logger.warning("engine CPU kernels unavailable (%s: %s); decode attention gathers blocks instead",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    return CpuKernels(*(getattr(module, name) for name in CpuKernels._fields))
