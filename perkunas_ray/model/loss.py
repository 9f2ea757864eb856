"""Chunked cross-entropy: the LM head is applied per chunk of tokens, so (tokens, vocab) logits never exist.

With gradients on, each chunk's gradients (w.r.t. the hidden states and the head weight) are computed right after
its loss, in the forward pass, while its logits are alive (a fused linear cross-entropy, as Liger-Kernel's and
Apple's cut-cross-entropy do it); backward only scales them. The head then costs one matmul forward and two
backward, where recomputing each chunk's logits in backward (checkpointing) cost a third forward matmul — and the
head of a small model is about half of its compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def count_targets(targets: torch.Tensor) -> torch.Tensor:
    """Number of labelled positions (targets other than IGNORE_INDEX)."""
    return (targets != IGNORE_INDEX).sum()


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()  # (chunk, vocab), fp32 for a stable softmax
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


class _FusedLinearCrossEntropySum(torch.autograd.Function):
    """Sum of token cross-entropies of hidden @ weight.T; gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_tokens: int) -> torch.Tensor:
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            hc, tc = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
            rows = (tc != IGNORE_INDEX).nonzero().squeeze(1)
            log_probs = torch.log_softmax((hc @ weight.t()).float(), dim=-1)  # fp32 for a stable softmax
            total -= log_probs[rows, tc[rows]].sum()
            # d(sum CE)/d logits = softmax - one_hot(target), zero on unlabelled rows.
            grad_logits = log_probs.exp_()
            grad_logits[rows, tc[rows]] -= 1.0
            if rows.numel() < tc.shape[0]:
                grad_logits[tc == IGNORE_INDEX] = 0.0
            grad_logits = grad_logits.to(hidden.dtype)
            if want_hidden:
                grad_hidden[start:start + chunk_tokens] = grad_logits @ weight.to(hidden.dtype)
            if want_weight:
                grad_weight += (grad_logits.t() @ hc).float()
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scaled_hidden = None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype)
        scaled_weight = None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype)
        return scaled_hidden, scaled_weight, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_tokens: int) -> torch.Tensor:
    """Mean token cross-entropy of logits = hidden @ weight.T against targets.

    hidden (..., D), weight (V, D), targets (...) with IGNORE_INDEX for positions without a label.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    num_targets = count_targets(t).clamp(min=1)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropySum.apply(h, weight, t, chunk_tokens) / num_targets
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_tokens):
        total = total + _chunk_loss_sum(h[start:start + chunk_tokens], weight, t[start:start + chunk_tokens])
    return total / num_targets
