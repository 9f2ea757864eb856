"""The streamed optimizer step on one device: shard-major forward with stored boundaries, reverse replay.

Forward runs every shard but the head over all micro-batches of the step (one shard load serves the
whole batch) and stores the activation entering each shard. Backward walks the shards in reverse: it
re-loads a shard, replays its forward from the stored boundary with autograd on, back-propagates the
incoming gradient and hands the input gradient to the previous shard; the shard's gradients (fp32,
unscaled) go to `grad_sink` at once, so at most one shard's gradients live on the device.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.func import functional_call

from perkunas_ray.config import RunConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.shards import EMBED_WEIGHT, build_shard, shard_num_bytes, stream_shard_specs
from perkunas_ray.run_setup import rss_bytes
from perkunas_ray.stream.batch import autocast_context, micro_batch_weights, split_batch
from perkunas_ray.stream.interface import StepStats, UpdatePlan
from perkunas_ray.stream.memory import MemoryTracker, tensor_bytes, workspace_bytes
from perkunas_ray.stream.staging import Loader, ShardStager, StageEntry
from perkunas_ray.stream.trace import LocalTraceStore, TraceStore, trace_device
from perkunas_ray.stream.trace_copy import OverlappedHostTraces

GradSink = Callable[[str, dict[str, torch.Tensor], list[float]], None]  # (shard, its gradients, their norms)
# The head's share of a tied embedding's gradient -> what seeds the embedding's gradient later (None: nothing).
TiedGradSeed = Callable[[torch.Tensor], Callable[[], torch.Tensor | None]]


def keep_tied_grad(grad: torch.Tensor) -> Callable[[], torch.Tensor | None]:
    return lambda: grad


class StreamCompute:
    """Owns the compute device; shard modules live on the meta device and run through functional_call."""

    def __init__(self, cfg: RunConfig, device: torch.device,
                 trace_factory: Callable[[MemoryTracker, int], TraceStore] | None = None) -> None:
        self.cfg = cfg
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.specs = stream_shard_specs(cfg.model)
        with torch.device("meta"):
            self.modules = {s.name: build_shard(cfg.model, s).train() for s in self.specs}
        self.tied = cfg.model.tie_embeddings
        self.embed_name, self.head_name = self.specs[0].name, self.specs[-1].name
        self.tracker = MemoryTracker(device)
        self.activation_peak: int | None = None  # largest saved-activation figure seen in a replay
        sizes = [shard_num_bytes(cfg.model, s) for s in self.specs]
        embed_bytes = cfg.model.vocab_size * cfg.model.d_model * 4
        self.grad_allowance = max(sizes) + (embed_bytes if self.tied else 0)
        # On CUDA the budget is held against the allocator's figure, which includes the libraries' workspaces.
        workspace = workspace_bytes(device)
        budget = cfg.stream.max_resident_bytes
        if budget and max(sizes) + self.grad_allowance + workspace > budget:
            held = f" + {workspace:,} of CUDA library workspace" if workspace else ""
            raise ConfigError(f"stream.max_resident_bytes is {budget:,} but the largest shard needs "
                              f"{max(sizes) + self.grad_allowance:,} bytes resident (parameters + gradients)"
                              f"{held}; raise the budget or lower model.layers_per_shard")
        self.trace_factory = trace_factory or self._local_traces
        self._rng_states: dict[tuple[int, int], torch.Tensor] = {}
        self.tied_grad_seed: TiedGradSeed = keep_tied_grad  # data parallel: ShardReducer.tied_grad_seed

    def _local_traces(self, tracker: MemoryTracker, num_micro: int) -> TraceStore:
        """Boundaries where stream.trace_storage says; host ones of a CUDA step cross on side streams."""
        s = self.cfg.stream
        where = trace_device(s.trace_storage, s.trace_storage_device, self.device)
        if self.device.type == "cuda" and where.type == "cpu":
            return OverlappedHostTraces(self.device, tracker)
        return LocalTraceStore(where, self.device, tracker)

    # ---- schedules ---------------------------------------------------------------------------------
    def _head_borrow(self) -> tuple[tuple[str, str], ...]:
        return ((self.embed_name, EMBED_WEIGHT),) if self.tied else ()

    def train_schedule(self) -> list[StageEntry]:
        forward = [StageEntry(s.name, "forward") for s in self.specs[:-1]]
        backward = [StageEntry(self.head_name, "backward", self._head_borrow())]
        backward += [StageEntry(s.name, "backward") for s in reversed(self.specs[:-1])]
        return forward + backward

    def eval_schedule(self) -> list[StageEntry]:
        entries = [StageEntry(s.name, "eval") for s in self.specs[:-1]]
        return entries + [StageEntry(self.head_name, "eval", self._head_borrow())]

    def _stager(self, loader: Loader, entries: list[StageEntry]) -> ShardStager:
        s = self.cfg.stream
        window = 0 if s.prefetch_shards == "none" else s.prefetch_window
        return ShardStager(loader, entries, self.device, self.tracker, s.max_resident_shards,
                           s.max_resident_bytes, window, self.grad_allowance, lambda: self.activation_peak)

    # ---- one shard's forward -----------------------------------------------------------------------
    def _run_shard(self, index: int, params: dict[str, torch.Tensor], inp: torch.Tensor,
                   targets: torch.Tensor | None) -> torch.Tensor:
        spec = self.specs[index]
        module = self.modules[spec.name]
        if spec.kind == "head":
            tied = params.get(EMBED_WEIGHT) if self.tied else None
            own = {k: v for k, v in params.items() if k != EMBED_WEIGHT or not self.tied}
            return functional_call(module, own, (inp, targets), {"tied_weight": tied})
        return functional_call(module, params, (inp,))

    def _rng(self, key: tuple[int, int], replay: bool) -> contextlib.AbstractContextManager:
        """Dropout must draw the same masks in replay as in forward: keep the RNG state per (shard, mb)."""
        if self.cfg.model.dropout == 0.0:
            return contextlib.nullcontext()
        if not replay:
            self._rng_states[key] = torch.get_rng_state() if self.device.type == "cpu" else \
                torch.cuda.get_rng_state(self.device)
            return contextlib.nullcontext()
        state = self._rng_states.pop(key)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []))
        if self.device.type == "cpu":
            torch.set_rng_state(state)
        else:
            torch.cuda.set_rng_state(state, self.device)
        return stack

    # ---- the step ------------------------------------------------------------------------------------
    def train_step(self, batch: np.ndarray, loader: Loader, grad_sink: GradSink, plan: UpdatePlan,
                   step_targets: int | None = None) -> StepStats:
        """batch: (M, B, T+1) token blocks of one optimizer step. Returns the loss: the sum of token losses over
        every micro-batch / the step's number of trained tokens. `step_targets`: that number over every
        data-parallel worker when `batch` is one worker's slice (the loss and gradients are then its share)."""
        dtype = self.cfg.train.dtype
        num_micro = batch.shape[0]
        batch = np.array(batch)  # an object-store batch is read-only; torch wants writable memory
        xs, ys = zip(*(split_batch(batch[m], self.device) for m in range(num_micro)), strict=True)
        stats = StepStats(num_tokens=sum(x.numel() for x in xs))
        self.tracker.reset_peak()
        traces = self.trace_factory(self.tracker, num_micro)
        entries = self.train_schedule()
        stager = self._stager(loader, entries)
        nfwd = len(self.specs) - 1
        try:
            start = time.perf_counter()
            with torch.no_grad(), autocast_context(self.device, dtype):
                for index in range(nfwd):
                    params = stager.take(index)
                    for m in range(num_micro):
                        inp = xs[m] if index == 0 else traces.get((index, m))
                        with self._rng((index, m), replay=False):
                            out = self._run_shard(index, params, inp, None)
                        traces.put((index + 1, m), out)
                        del out
                    stager.release(index)
            stats.forward_s = time.perf_counter() - start
            start = time.perf_counter()
            self._backward(stats, xs, ys, micro_batch_weights(ys, step_targets), traces, stager, grad_sink, plan)
            stats.backward_s = time.perf_counter() - start
        finally:
            stager.close()
            traces.clear()
        stats.wait_s = stager.wait_s
        stats.prefetch_hits, stats.prefetch_misses = stager.hits, stager.misses
        stats.resident_shards, stats.resident_bytes = stager.max_resident_seen, stager.max_resident_bytes
        stats.tracked_peak_bytes = self.tracker.peak
        stats.peak_bytes = self.tracker.device_peak()
        stats.rss_bytes = rss_bytes()
        return stats

    def _backward(self, stats: StepStats, xs: tuple, ys: tuple, weights: list[float], traces: TraceStore,
                  stager: ShardStager, grad_sink: GradSink, plan: UpdatePlan) -> None:
        num_micro = len(xs)
        nfwd = len(self.specs) - 1
        inv_scale = None if plan.loss_scale == 1.0 else \
            torch.tensor(plan.loss_scale, dtype=torch.float64).reciprocal().float().item()
        grad_in: list[torch.Tensor | None] = [None] * num_micro
        tied_grad: torch.Tensor | None = None
        tied_seed: Callable[[], torch.Tensor | None] | None = None
        # Losses and norms stay on the device until the shard (or step) is done: each float() would stall a GPU's
        # queue. The fp64 sum adds the same fp32 values in the same order as Python floats did.
        loss_total = torch.zeros((), dtype=torch.float64, device=self.device)
        # Each shard's gradient bytes are reserved before the previous shard is released, so the stager
        # never fills the room they need (it gates on the live byte count).
        grad_bytes = stager.entry_bytes(nfwd)
        self.tracker.add("grads", grad_bytes)
        for offset, index in enumerate(range(nfwd, -1, -1)):
            spec = self.specs[index]
            params = stager.take(nfwd + offset)
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            owned = [k for k in leaves if not (self.tied and k == EMBED_WEIGHT and spec.kind == "head")]
            if spec.kind == "embed" and tied_grad is not None and tied_seed is not None:
                seed = tied_seed()
                if seed is not None:  # the head's share first, as backward through the full model
                    leaves[EMBED_WEIGHT].grad = seed
                self.tracker.sub("grads", tensor_bytes(tied_grad))  # now counted as this shard's gradient
            new_grad_in: list[torch.Tensor | None] = [None] * num_micro
            for m in range(num_micro):
                inp = xs[m] if index == 0 else traces.get((index, m)).detach().requires_grad_(True)
                with self.tracker.saved_activations() as counted, torch.enable_grad(), \
                        autocast_context(self.device, self.cfg.train.dtype), self._rng((index, m), replay=True):
                    out = self._run_shard(index, leaves, inp, ys[m] if spec.kind == "head" else None)
                self.activation_peak = max(self.activation_peak or 0, sum(counted))
                if spec.kind == "head":
                    loss = out * weights[m]  # mean over its trained tokens -> its share of the step's sum
                    (loss if plan.loss_scale == 1.0 else loss * plan.loss_scale).backward()
                    loss_total += loss.detach().double()
                else:
                    out.backward(grad_in[m])
                del out
                self.tracker.release(counted)
                if index > 0:
                    new_grad_in[m] = inp.grad
                    self.tracker.add("grads", tensor_bytes(inp.grad))
                if grad_in[m] is not None:
                    self.tracker.sub("grads", tensor_bytes(grad_in[m]))
                    grad_in[m] = None
                traces.drop((index, m))
            grad_in = new_grad_in
            grads = {k: leaves[k].grad for k in owned}
            if spec.kind == "head" and self.tied:
                tied_grad = leaves[EMBED_WEIGHT].grad  # held until the embedding shard's backward
                self.tracker.add("grads", tensor_bytes(tied_grad))
                tied_seed = self.tied_grad_seed(tied_grad)
            if inv_scale is not None:
                for g in grads.values():
                    g.mul_(inv_scale)
            norms = torch.stack([torch.linalg.vector_norm(g, 2.0, dtype=torch.float32)
                                 for g in grads.values()]).tolist() if grads else []  # one device sync per shard
            stats.param_norms[spec.name] = norms
            stats.finite = stats.finite and all(np.isfinite(norms))
            grad_sink(spec.name, grads, norms)
            del grads, leaves
            self.tracker.sub("grads", grad_bytes)
            if index > 0:
                grad_bytes = stager.entry_bytes(nfwd + offset + 1)
                self.tracker.add("grads", grad_bytes)
            stager.release(nfwd + offset)
        stats.loss = float(loss_total)

    # ---- forward-only losses (validation, guard re-measure) -----------------------------------------
    @torch.no_grad()
    def eval_losses(self, batches: np.ndarray, loader: Loader) -> list[float]:
        """Per-batch mean loss of (K, B, T+1) batches, streamed shard-major like the training forward."""
        num = batches.shape[0]
        batches = np.array(batches)
        xs, ys = zip(*(split_batch(batches[k], self.device) for k in range(num)), strict=True)
        traces = self.trace_factory(self.tracker, num)
        stager = self._stager(loader, self.eval_schedule())
        losses = [0.0] * num
        for module in self.modules.values():
            module.eval()
        try:
            with autocast_context(self.device, self.cfg.train.dtype):
                for index, spec in enumerate(self.specs):
                    params = stager.take(index)
                    for k in range(num):
                        inp = xs[k] if index == 0 else traces.get((index, k))
                        out = self._run_shard(index, params, inp, ys[k] if spec.kind == "head" else None)
                        if spec.kind == "head":
                            losses[k] = float(out)
                        else:
                            traces.put((index + 1, k), out)
                        if index > 0:
                            traces.drop((index, k))
                    stager.release(index)
        finally:
            for module in self.modules.values():
                module.train()
            stager.close()
            traces.clear()
        return losses
