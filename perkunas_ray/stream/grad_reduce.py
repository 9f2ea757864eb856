"""Data-parallel collectives of a streamed step: per-shard gradient sums that overlap the replay, step figures.

Each shard's gradients leave the backward as one flat buffer whose sum over the workers is started
with an asynchronous `torch.distributed.all_reduce`; the previous shard's sum is finished first, so
the reduction of shard k runs while shard k-1 replays (DDP's bucketing, with a shard as the bucket).
Every worker divides by the step's global count of trained tokens before its backward (the loss
weights), so the sum is the step's gradient exactly and every worker sees the same figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from perkunas_ray.stream.memory import MemoryTracker, tensor_bytes

ReducedSink = Callable[[str, dict[str, torch.Tensor], list[float]], None]  # (shard, summed grads, their norms)


class ShardReducer:
    """A GradSink for StreamCompute: sums each shard's gradients over the workers, then calls `finish`.

    `overlap` False (a byte budget is set: stream.max_resident_bytes): each sum is finished at once, so
    no second shard's gradients stay on the device beside the next shard's replay.
    """

    def __init__(self, finish: ReducedSink, tracker: MemoryTracker, overlap: bool = True) -> None:
        self.finish, self.tracker, self.overlap = finish, tracker, overlap
        self._in_flight: tuple[str, list[str], list[torch.Size], torch.Tensor, dist.Work] | None = None
        self.reduce_s = 0.0  # step time spent on reductions: flattening, launching, waiting for the sums
        self.norms: dict[str, list[float]] = {}  # shard -> per-parameter norms of the summed gradients

    def start_step(self) -> None:
        self.reduce_s = 0.0
        self.norms = {}

    def __call__(self, name: str, grads: dict[str, torch.Tensor], norms: list[float]) -> None:
        """The local norms are ignored: clipping needs the norms of the sums."""
        self._finish_in_flight()
        start = time.perf_counter()
        keys = list(grads)
        flat = torch.cat([grads[k].reshape(-1) for k in keys])
        self.tracker.add("grads", tensor_bytes(flat))  # held while the next shard replays
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        self._in_flight = (name, keys, [grads[k].shape for k in keys], flat, work)
        self.reduce_s += time.perf_counter() - start
        if not self.overlap:
            self._finish_in_flight()

    def tied_grad_seed(self, grad: torch.Tensor) -> Callable[[], torch.Tensor | None]:
        """StreamCompute.tied_grad_seed: the head's shares of a tied embedding's gradient are summed on rank 0
        while the blocks replay, and only rank 0 seeds the embedding's gradient with the sum. The embedding's
        gradient then adds up as one worker with accumulation adds it (head's share first, then each
        micro-batch's in order), bit for bit when each worker has one micro-batch per step."""
        start = time.perf_counter()
        work = dist.reduce(grad, dst=0, op=dist.ReduceOp.SUM, async_op=True)
        self.reduce_s += time.perf_counter() - start

        def seed() -> torch.Tensor | None:
            start = time.perf_counter()
            work.wait()
            self.reduce_s += time.perf_counter() - start
            return grad if dist.get_rank() == 0 else None

        return seed

    def drain(self) -> None:
        """Finish the last shard's sum (after the backward)."""
        self._finish_in_flight()

    def _finish_in_flight(self) -> None:
        if self._in_flight is None:
            return
        name, keys, shapes, flat, work = self._in_flight
        self._in_flight = None
        start = time.perf_counter()
        work.wait()
        self.reduce_s += time.perf_counter() - start
        parts = flat.split([shape.numel() for shape in shapes])
        grads = {k: part.view(shape) for k, part, shape in zip(keys, parts, shapes, strict=True)}
        norms = [float(torch.linalg.vector_norm(g, 2.0)) for g in grads.values()]
        self.norms[name] = norms
        self.finish(name, grads, norms)
        self.tracker.sub("grads", tensor_bytes(flat))


def gather_rows(row: list[float], device: torch.device) -> list[list[float]]:
    """Every worker's `row` (same length everywhere), in rank order, on every worker (float64: exact)."""
    mine = torch.tensor(row, dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return [r.tolist() for r in rows]


def gather_chunks(values: list[float], sizes: list[int], device: torch.device) -> list[float]:
    """Concatenate each worker's `values` (worker r holds sizes[r] of them) in rank order, on every worker."""
    width = max(sizes)
    rows = gather_rows(values + [0.0] * (width - len(values)), device) if width else []
    return [v for r, size in enumerate(sizes) for v in rows[r][:size]]
