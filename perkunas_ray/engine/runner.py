"""The model runner: one forward pass of the model over a step's scheduled tokens, attention paged."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from perkunas_ray.engine.cpu_kernels import cpu_kernels
from perkunas_ray.engine.decode_forward import DecodeForward
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.logprobs import logprob_entries
from perkunas_ray.engine.paged_attention import PagedAttention
from perkunas_ray.engine.request import Request
from perkunas_ray.engine.scheduler import ScheduledRequest, SchedulerOutput
from perkunas_ray.engine.step_inputs import StepInputBuilder, StepInputs
from perkunas_ray.model.decoder import DecoderLM

# Up to this many decodes a step runs its blocks in one C++ call (DecodeForward.decodes); more go through the
# eager forward (its linears on the same panels, engine/cpu_linear.py). Speed preset, 2 threads,
# ms a step fused / eager: 8 decodes 3.3 / 4.1, 16 decodes 6.0-6.4 either way; the fused call also lets go of the
# GIL for the whole step, so a serving replica's event loop runs beside it (max_num_seqs defaults to 16).
FUSED_DECODE_ROWS = 16


@dataclasses.dataclass
class PromptLogprobs:
    """Log-prob entries of the prompt tokens one prefill chunk predicts, from prompt position `first_position`."""

    request: Request
    first_position: int
    entries: list[dict[int, float]]


class RunnerOutput(NamedTuple):
    logits: torch.Tensor  # (S, V) fp32 of the S sampling requests, in `output.scheduled` order
    prompt_logprobs: list[PromptLogprobs]


def wants_prompt_logprobs(item: ScheduledRequest) -> bool:
    """Does this chunk hold prompt positions whose logits predict a prompt token, for a request asking for them?

    Only the first of `n` sequences computes them: its siblings share the prompt. Such a request skips the
    prefix cache (kv_cache_manager), as in vLLM, so every prompt position passes through here once.
    """
    request = item.request
    return (request.params.prompt_logprobs is not None and request.index == 0
            and item.num_computed_tokens < request.num_prompt_tokens - 1)


class ModelRunner:
    """Runs a step's flat batch through DecodeForward (the DecoderLM's weights and math, leaner; the C++ blocks for
    a few decodes) with a paged-attention backend."""

    def __init__(self, model: DecoderLM, kv_store: KVStore, block_size: int, free_model_weights: bool = False) -> None:
        """free_model_weights: the runner owns the model: the linear weights the forward holds as panels are freed
        from it (see DecodeForward)."""
        self.model = model
        self.cfg = model.config
        self.kv_store = kv_store
        self.block_size = block_size
        self.device = model.head_weight.device
        kernels = cpu_kernels() if self.device.type == "cpu" and kv_store.dtype == torch.float32 else None
        self.argmax_rows = kernels.argmax_rows if kernels is not None else None  # for the sampler's greedy rows
        self.decode_kernel = kernels.paged_decode_attention if kernels is not None and not kv_store.quantized else None
        self.forward = DecodeForward(model, kernels, fused_decodes=self.decode_kernel is not None,
                                     free_model_weights=free_model_weights)
        self.freed_bytes = self.forward.freed_bytes
        self.inputs = StepInputBuilder(block_size, self.device, self.cfg.attn_softcap,
                                       in_place_decodes=self.decode_kernel is not None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (R, D) -> logits (R, V) in fp32."""
        logits = self.forward.head(hidden)
        return logits if logits.dtype == torch.float32 else logits.float()

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> RunnerOutput:
        """Compute the step's tokens, writing their KV; the logits of the sampling requests, and the prompt
        log-probs of the chunks that want them."""
        # Decodes (one token each) attend as one padded batch; each prefill chunk on its own.
        items = [it for it in output.scheduled if it.num_new_tokens == 1]
        items += [it for it in output.scheduled if it.num_new_tokens > 1]
        step = self.inputs.build(items)
        if self._fused_decodes(step):
            h = self.forward.decodes(step, self.kv_store)
        else:
            attn = PagedAttention(self.kv_store, step.slots, step.groups, self.decode_kernel)
            h = self.forward(step.input_ids, step.positions, step.max_position, attn)  # (N, D)
        first_row = {id(item): row for item, row in zip(items, step.first_rows, strict=True)}
        last_row = {id(item): row for item, row in zip(items, step.last_rows, strict=True)}
        prompt = [self._prompt_logprobs(item, h, first_row[id(item)])
                  for item in output.scheduled if wants_prompt_logprobs(item)]
        rows = [last_row[id(item)] for item in output.scheduled if item.samples]
        dev = self.device
        if not rows:
            return RunnerOutput(torch.empty(0, self.cfg.vocab_size, device=dev), prompt)
        # Decodes come first and each samples: when every item does, the rows are already in order.
        picked = h if len(rows) == h.shape[0] else h.index_select(0, torch.tensor(rows, dtype=torch.long, device=dev))
        return RunnerOutput(self.logits(picked), prompt)

    def _fused_decodes(self, step: StepInputs) -> bool:
        """Does this step run its blocks in one C++ call: only decodes the kernel reads in place, and few of them?"""
        return (self.forward.decode_layers is not None and len(step.groups) == 1
                and step.groups[0].decode_lengths is not None and step.input_ids.shape[1] <= FUSED_DECODE_ROWS)

    def _prompt_logprobs(self, item: ScheduledRequest, h: torch.Tensor, first_row: int) -> PromptLogprobs:
        """Raw log-probs (no penalty, no temperature: what the model says, as vLLM's default) of the prompt
        tokens that this chunk's positions predict: position p's logits score prompt token p + 1."""
        request = item.request
        start = item.num_computed_tokens
        end = min(start + item.num_new_tokens, request.num_prompt_tokens - 1)
        log_probs = self.logits(h[first_row:first_row + end - start]).log_softmax(-1)  # (end - start, V)
        targets = request.all_token_ids[start + 1:end + 1]
        return PromptLogprobs(request, start + 1, logprob_entries(log_probs, targets,
                                                                     request.params.prompt_logprobs or 0))
