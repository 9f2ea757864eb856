"""Linear layers of an engine step on CPU: where the engine's C++ kernels are built, their panels (any number of
rows); otherwise oneDNN's packed weights for several rows and row blocks for one.

The panels (engine/csrc/decode_layers.cpp) against oneDNN's packed weights, the speed preset's shapes, 2 threads,
median of 30, ms (panels / oneDNN): the (8192, 384) head at 1 row 0.46 / 0.87 from memory, at 16 rows 0.85 / 1.67
in cache; at 17-512 rows every shape within 0.9-1.1x of oneDNN or faster (the head at 512 rows: 20.4 / 24.3; the down
projection at 512: 2.4 / 3.3). So a weight with panels keeps no oneDNN copy, and an engine that owns its model frees
the model's copy once packed (DecodeForward's free_model_weights): the panels are then the only copy.

Without the kernels: MKL's `x @ W.T` is slow at serving batch sizes: it runs a few rows on one thread, and two
rows took longer than sixteen. Two remedies, measured on the speed preset's 15 step weights (2 layers + the (8192, 384) head, ~26 MB,
so out of cache as in a real step; one process, 2 cores, median of 50; `F.linear` / row blocks / oneDNN):

- rows 1:   2.63 / 0.63 / 0.87 ms     (1 thread: 2.61 / - / 1.92)
- rows 2:   5.60 / 0.89 / 0.96 ms     (1 thread: 5.36 / - / 1.95)
- rows 16:  4.30 / 3.24 / 1.67 ms     (1 thread: 6.03 / - / 3.22)
- rows 512: 40.2 / 39.3 / 33.4 ms     (1 thread: 79.0 / - / 64.5)

Row blocks: W viewed as P row blocks (P = the thread count) multiplied in one `bmm` runs the blocks in parallel;
the view shares W's memory. oneDNN (the primitive inductor's CPU freezing uses for linears): W reordered once into
its blocked layout, then a GEMM kernel made for it. So several rows take the packed weight, and a single row (a lone
decode) the row blocks; on one thread, where oneDNN's single-row kernel measured 10-60% slower than MKL's in a step
(the weights then come from memory), the plain product. The packed copy costs one more copy of the
linear weights in host memory (26 MB for the speed preset). Results differ from F.linear by float rounding only
(another summation order). PyTorch builds without oneDNN, other devices and dtypes other than fp32 keep the row
blocks (on one thread or a GPU: the plain product).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perkunas_ray.engine.cpu_kernels import CpuKernels


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


def onednn_packed(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` (out, in) reordered into oneDNN's layout for its linear kernel; None where that path is not taken."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


class StepLinear:
    """One weight (out, in) of the engine's forward: `step_linear(x)` is F.linear(x, weight), the fastest way here.

    `kernels`: the C++ kernels (engine/cpu_kernels.py), where they are built: fp32 rows multiply the weight's panels
    (`panels`, or packed here: one more copy of the weight, instead of oneDNN's). `wide`: the (V, D) head. Without
    the kernels, a single row on one thread multiplies a (D, V) copy of it, made on first use: a plain row-major
    GEMV, in a step 0.65 ms against 1.06 for oneDNN and ~1 for F.linear (speed preset, cold cache).
    """

    def __init__(self, weight: torch.Tensor, *, wide: bool = False, kernels: CpuKernels | None = None,
                 panels: torch.Tensor | None = None) -> None:
        self.weight: torch.Tensor | None = weight  # None once released: the panels hold it (see release_weight)
        self.out_features, self.in_features = weight.shape
        self.wide = wide and weight.device.type == "cpu"  # GPUs take either layout at full speed
        self._transposed: torch.Tensor | None = None
        # The C++ panels (fp32 CPU weights), where the kernels are built; oneDNN's packed copy otherwise.
        cpu_fp32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.linear_rows = kernels.linear_rows if kernels is not None and cpu_fp32 else None
        self.panels = None
        if self.linear_rows is not None:
            self.panels = panels if panels is not None else kernels.pack_panels(weight.detach())
        self.packed = onednn_packed(weight) if self.panels is None else None

    def release_weight(self) -> bool:
        """Let go of the weight where the panels hold all of it (True): the engine's one copy is then the panels,
        once the module that owns the weight lets go of it too (DecodeForward's free_model_weights)."""
        if self.panels is None:
            return False
        self.weight = None
        return True

    def dense_weight(self) -> torch.Tensor:
        """The weight (out, in): as given, or read back from the panels once released (the same values)."""
        if self.weight is not None:
            return self.weight
        return self.panels.permute(0, 2, 1).reshape(-1, self.in_features)[:self.out_features]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.linear_rows is not None and x.dtype == torch.float32:
            if x.dim() == 2 and x.is_contiguous():  # the head's rows: no reshapes, each a tensor call
                return self.linear_rows(x, self.panels, self.out_features)
            y = self.linear_rows(x.reshape(rows, x.shape[-1]).contiguous(), self.panels, self.out_features)
            return y.view(*x.shape[:-1], self.out_features)
        if self.packed is not None and rows > 1:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        weight = self.dense_weight()
        if not self.wide or split_parts(weight) > 1:
            return cpu_linear(x, weight)
        if self._transposed is None:
            self._transposed = weight.t().contiguous()
        return x @ self._transposed
