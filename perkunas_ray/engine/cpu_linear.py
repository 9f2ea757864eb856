"""Linear layers of an engine step on CPU, split across the torch threads.

At serving batch sizes (a few rows) MKL runs `x @ W.T` on one thread: with 2 threads, the speed preset's
14 layer weights took 0.51 ms at one row and 2.10 ms at 16, its (8192, 384) head 0.23 and 1.99 ms. Viewing W
as P row blocks (P = the thread count) and multiplying them in one `bmm` runs the blocks in parallel: 0.34 /
1.87 ms and 0.17 / 0.74 ms (one process, 2 cores, median of 5). The view shares W's memory. With one thread
the split gains nothing: the plain product is used. Results differ from F.linear by float rounding only
(another summation order inside the blocks, ~2e-6 here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_parts(weight: torch.Tensor) -> int:
    """How many row blocks `weight` (out, in) is split into on this thread count (1: not split)."""
    threads = torch.get_num_threads()
    if weight.device.type != "cpu" or threads < 2 or weight.shape[0] % threads or not weight.is_contiguous():
        return 1
    return threads


def cpu_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) without bias for x (..., in), its row blocks in parallel where that helps."""
    parts = split_parts(weight)
    if parts == 1:
        return F.linear(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    blocks = weight.view(parts, weight.shape[0] // parts, weight.shape[1])
    y = torch.bmm(blocks, rows.t().unsqueeze(0).expand(parts, -1, -1))  # (P, out/P, M)
    return y.permute(2, 0, 1).reshape(*x.shape[:-1], weight.shape[0])
