"""The decode loop's fast paths keep their slow paths' answers: batched greedy, reused step-input buffers, the
engine's own forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine.cpu_linear import StepLinear, cpu_linear, split_parts
from perkunas_ray.engine.decode_forward import DecodeForward
from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.engine.request import Request
from perkunas_ray.engine.sampler import Sampler
from perkunas_ray.engine.scheduler import ScheduledRequest
from perkunas_ray.engine.step_inputs import StepInputBuilder
from perkunas_ray.model.attention import CAUSAL_ATTENTION
from perkunas_ray.model.decoder import build_model

pytestmark = pytest.mark.unit


def test_batched_greedy_skips_nan_like_the_row_path() -> None:
    logits = torch.tensor([[0.0, float("nan"), 3.0, 1.0], [1.0, 2.0, float("nan"), 0.5], [4.0, 1.0, 2.0, 3.0]])
    requests = [Request(f"r{i}", [1, 2], SamplingParams(temperature=0)) for i in range(3)]
    out = Sampler()(logits, requests)
    assert out.token_ids == [2, 1, 0] and out.logprobs == [None] * 3 and not out.errors


def _scheduled(request_id: str, num_tokens: int, computed: int, new: int, block_ids: list[int]) -> ScheduledRequest:
    request = Request(request_id, list(range(1, num_tokens + 1)))
    return ScheduledRequest(request, computed, new, block_ids)


def test_every_group_keeps_its_own_block_table_and_mask() -> None:
    """Decodes batch in one group, each prefill chunk gets its own; building a later group must not
    overwrite an earlier one's table (they share reused buffers)."""
    bs = 4
    items = [_scheduled("d1", 6, 5, 1, [3, 7]), _scheduled("d2", 9, 8, 1, [1, 2, 5]),
             _scheduled("p1", 10, 0, 10, [9, 4, 6]), _scheduled("p2", 7, 4, 3, [8, 0])]
    step = StepInputBuilder(bs, torch.device("cpu"), softcap=0.0).build(items)
    assert step.input_ids[0].tolist() == [6, 9, *range(1, 11), 5, 6, 7]
    assert step.positions[0].tolist() == [5, 8, *range(10), 4, 5, 6]
    slots = [7 * bs + 1, 5 * bs + 0] + [b * bs + o for b in (9, 4, 6) for o in range(bs)][:10] + [0, 1, 2]
    assert step.slots.tolist() == slots
    assert (step.first_rows, step.last_rows) == ([0, 1, 2, 12], [0, 1, 11, 14])
    decodes, p1, p2 = step.groups
    assert decodes.block_table.tolist() == [[3, 7, 0], [1, 2, 5]]
    assert p1.block_table.tolist() == [[9, 4, 6]] and p2.block_table.tolist() == [[8, 0]]
    # Query at position p sees keys 0..p; the padding block of d1 (keys 8..11) stays hidden.
    assert decodes.mask[:, 0, 0].sum(-1).tolist() == [6, 9]
    assert p2.mask[0, 0].sum(-1).tolist() == [5, 6, 7]
    lone = StepInputBuilder(bs, torch.device("cpu"), softcap=0.0).build(items[:1]).groups[0]
    assert lone.mask is None and lone.num_keys == 6  # a lone decode attends its exact keys, unmasked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_forward_equals_the_models_forward(dtype: torch.dtype, one_torch_thread) -> None:
    """Fused RMSNorm, the cached RoPE table (grown past max_seq_len, as pruning needs) and the rolled
    rotation give the training module's hidden states bit for bit, with QK-norm and grouped KV heads (one
    thread: with more, the linears split into row blocks, which round differently; tested below)."""
    cfg = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=16,
                      qk_norm=True).validate()
    model = build_model(cfg, seed=3).to(dtype).eval()
    forward = DecodeForward(model)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    for offset in (0, 40):
        positions = torch.arange(offset, offset + 12)[None]
        with torch.inference_mode():
            ours = forward(ids, positions, offset + 11, CAUSAL_ATTENTION)
            theirs = model.hidden_states(ids, positions)[0]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert forward.cos.shape[0] >= 52


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_split_linear_equals_f_linear_to_rounding(rows: int) -> None:
    """On several threads a linear runs as row blocks in one bmm: the same product up to float rounding; one
    thread, an odd row count or a non-contiguous weight take the plain F.linear."""
    weight = torch.randn(96, 40, generator=torch.Generator().manual_seed(rows))
    x = torch.randn(1, rows, 40, generator=torch.Generator().manual_seed(rows + 1))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert split_parts(weight) == 2 and split_parts(torch.randn(95, 40)) == 1
        assert split_parts(weight.t().contiguous().t()) == 1
        torch.testing.assert_close(cpu_linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-6)
        assert cpu_linear(x, weight).shape == (1, rows, 96)
        torch.set_num_threads(1)
        assert split_parts(weight) == 1
        assert torch.equal(cpu_linear(x, weight), F.linear(x, weight))
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("threads", [1, 2])
def test_step_linear_takes_onednn_for_rows_and_row_blocks_for_one(threads: int) -> None:
    """A step linear equals F.linear to rounding at any row count (prefill chunks, strided inputs included);
    several rows take oneDNN's packed weight, a single row the row blocks or the plain product (proven by which
    kernel the profiler sees); a wide head's single row on one thread, its transposed copy."""
    weight = torch.randn(96, 40, generator=torch.Generator().manual_seed(threads))
    linear, head = StepLinear(weight), StepLinear(weight, wide=True)
    assert linear.packed is not None and StepLinear(weight.bfloat16()).packed is None  # fp32 only
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for rows in (1, 2, 16, 200):
            x = torch.randn(1, rows, 40, generator=torch.Generator().manual_seed(rows))
            for given in (x, x[0].t().contiguous().t()[None]):  # row-major, and feature-major as row blocks give
                with torch.profiler.profile() as prof:
                    y = linear(given)
                torch.testing.assert_close(y, F.linear(x, weight), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(head(given), F.linear(x, weight), rtol=1e-5, atol=1e-5)
                assert y.shape == (1, rows, 96)
                names = {event.name for event in prof.events()}
                assert ("mkldnn::_linear_pointwise" in names) == (rows > 1), (rows, threads, names)
    finally:
        torch.set_num_threads(before)
    assert (head._transposed is not None) == (threads == 1)
