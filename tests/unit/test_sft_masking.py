"""Prompt masking and exact accumulation: prompt positions get no gradient, pads change nothing, weights are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perkunas_ray.model.decoder import build_model
from perkunas_ray.model.loss import chunked_cross_entropy
from perkunas_ray.stream.batch import mask_untrained, micro_batch_weights, split_batch
from tests.conftest import tiny_config

CPU = torch.device("cpu")
PAD = 1


def sample(rng: np.random.Generator, prompt: int, reply: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids: `prompt` untrained tokens, then `reply` trained ones."""
    ids = rng.integers(6, 97, size=prompt + reply)
    return ids, np.arange(prompt + reply) >= prompt


def block(ids: np.ndarray, trained: np.ndarray, length: int) -> np.ndarray:
    """One padded row as prepare_sft writes it: pads after the sample, their targets untrained."""
    pad = length - len(ids)
    return mask_untrained(np.concatenate([ids, np.full(pad, PAD)]), np.concatenate([trained, np.zeros(pad, bool)]))


def test_gradient_wrt_logits_is_zero_exactly_at_prompt_positions():
    rng = np.random.default_rng(0)
    rows = np.stack([block(*sample(rng, 7, 5), 17), block(*sample(rng, 3, 9), 17)])
    _, targets = split_batch(rows, CPU)
    logits = torch.randn(2, 16, 97, requires_grad=True)
    # hidden @ I = logits: the chunked loss's gradient wrt `hidden` is its gradient wrt the logits
    chunked_cross_entropy(logits, torch.eye(97), targets, chunk_tokens=5).backward()
    per_position = logits.grad.abs().sum(-1)
    trained = torch.as_tensor(rows[:, 1:] >= 0)
    assert trained.sum() == 5 + 9
    assert torch.all(per_position[~trained] == 0.0)  # exactly zero: prompt, role and pad positions
    assert torch.all(per_position[trained] > 0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(), seed=0, device=CPU).eval()


def test_a_padded_sample_has_its_loss_alone(model):
    rng = np.random.default_rng(1)
    first, second = sample(rng, 6, 8), sample(rng, 4, 11)
    alone = split_batch(block(*first, 15)[None], CPU)  # no padding at all
    with torch.no_grad():
        loss_alone = float(model(*alone))
        loss_padded = float(model(*split_batch(block(*first, 40)[None], CPU)))
        beside = split_batch(np.stack([block(*first, 40), block(*second, 40)]), CPU)
        loss_pair = float(model(*beside))
        loss_second = float(model(*split_batch(block(*second, 40)[None], CPU)))
    assert abs(loss_padded - loss_alone) <= 1e-6
    # the pair's mean over its 8 + 11 trained targets is the token-weighted mean of the two alone
    assert abs(loss_pair - (8 * loss_alone + 11 * loss_second) / 19) <= 1e-6


def test_weighted_micro_batches_equal_one_batch_of_all_rows(model):
    """Gradient accumulation is exact for uneven trained-token counts: 3 micro-batches == 1 batch."""
    rng = np.random.default_rng(2)
    rows = np.stack([block(*sample(rng, int(p), int(r)), 33) for p, r in [(3, 20), (20, 2), (5, 5), (1, 30),
                                                                          (10, 1), (2, 12)]])
    x, y = split_batch(rows, CPU)
    model.zero_grad()
    model(x, y).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    micro = [split_batch(rows[i:i + 2], CPU) for i in (0, 2, 4)]
    weights = micro_batch_weights([t for _, t in micro])
    assert abs(sum(weights) - 1.0) < 1e-12 and len(set(weights)) == 3
    for (xm, ym), weight in zip(micro, weights, strict=True):
        (model(xm, ym) * weight).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, whole[name], rtol=1e-5, atol=1e-7), name


def test_pretraining_blocks_decode_unchanged():
    rows = np.arange(2 * 9).reshape(2, 9).astype(np.uint16)
    x, y = split_batch(rows, CPU)
    assert torch.equal(x, torch.as_tensor(rows[:, :-1], dtype=torch.long))
    assert torch.equal(y, torch.as_tensor(rows[:, 1:], dtype=torch.long))
    assert micro_batch_weights([y, y, y]) == [1 / 3] * 3
