"""The engine's C++ CPU kernels equal the eager paths they replace (decode attention: gather + SDPA, read in place
from the paged KV store; RMSNorm: PyTorch's; a decodes-only step's blocks in one call: the eager forward); the
engine takes them where they apply and works without them where they cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from perkunas_ray.config import ModelConfig
from perkunas_ray.engine.cpu_kernels import cpu_kernels
from perkunas_ray.engine.cpu_linear import StepLinear
from perkunas_ray.engine.decode_forward import DecodeForward
from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.paged_attention import PagedAttention
from perkunas_ray.engine.request import Request
from perkunas_ray.engine.runner import FUSED_DECODE_ROWS
from perkunas_ray.engine.sampler import Sampler, greedy
from perkunas_ray.engine.scheduler import ScheduledRequest
from perkunas_ray.engine.step_inputs import StepInputBuilder
from perkunas_ray.engine.toy import toy_tokenizer
from perkunas_ray.model.attention import masked_attention
from perkunas_ray.model.decoder import build_model
from tests.conftest import tiny_config

pytestmark = pytest.mark.unit

kernels = cpu_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason="no C++ compiler here: the engine runs the eager paths")


def _eager(q: torch.Tensor, store: KVStore, table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The engine's eager decode attention: gather the blocks, mask past each length, SDPA."""
    keys, values = store.gather(0, table)
    visible = torch.arange(keys.shape[2])[None] < lengths[:, None]
    return masked_attention(q[:, :, None], keys, values, visible[:, None, None, :], 0.0)[:, :, 0]


@needs_kernels
@pytest.mark.parametrize(("heads", "kv_heads", "threads"), [(4, 4, 2), (4, 2, 2), (8, 2, 1), (4, 1, 2)])
def test_kernel_equals_gather_and_sdpa(heads: int, kv_heads: int, threads: int) -> None:
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    hd, bs, num_blocks, width = 16, 4, 40, 6
    store = KVStore(1, num_blocks, bs, kv_heads, hd, torch.float32)
    store.keys[0].copy_(torch.randn(store.keys[0].shape, generator=g))
    store.values[0].copy_(torch.randn(store.values[0].shape, generator=g))
    for batch in (1, 3, 7):
        table = torch.stack([torch.randperm(num_blocks, generator=g)[:width] for _ in range(batch)])
        lengths = torch.randint(1, width * bs + 1, (batch,), generator=g)
        lengths[0] = width * bs  # every slot of the table
        q = torch.randn(batch, heads, hd, generator=g)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            out = kernels.paged_decode_attention(q, store.keys[0], store.values[0], table, lengths, hd ** -0.5)
        finally:
            torch.set_num_threads(before)
        torch.testing.assert_close(out, _eager(q, store, table, lengths), rtol=1e-5, atol=1e-6)


@needs_kernels
def test_kernel_refuses_lengths_and_blocks_out_of_range() -> None:
    store = KVStore(1, 8, 4, 2, 16, torch.float32)
    q = torch.randn(1, 2, 16)

    def attend(table: list[list[int]], length: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return kernels.paged_decode_attention(q, store.keys[0], store.values[0], torch.tensor(table, dtype=dtype),
                                              torch.tensor([length]), 0.25)

    with pytest.raises(RuntimeError, match=r"lengths\[0\] = 9 outside \[1, 8\]"):
        attend([[3, 1]], 9)
    with pytest.raises(RuntimeError, match=r"block_table\[0, 1\] = 8 outside \[0, 8\)"):
        attend([[3, 8]], 5)
    with pytest.raises(RuntimeError, match="block_table must be a contiguous"):
        attend([[3, 1]], 8, torch.int32)
    assert attend([[3, 8]], 4).shape == (1, 2, 16)  # a padding block past the length is never read


@needs_kernels
def test_engine_takes_the_kernels_for_fp32_only() -> None:
    model = build_model(tiny_config(), seed=0).eval()
    runner = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=16)).core.runner
    assert runner.decode_kernel is kernels.paged_decode_attention and runner.forward.rms_norm_kernel is kernels.rms_norm
    int8 = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=16, kv_dtype="int8")).core.runner
    assert int8.decode_kernel is None and int8.forward.rms_norm_kernel is kernels.rms_norm
    bf16 = NativeEngine(build_model(tiny_config(), seed=0).eval().to(torch.bfloat16), toy_tokenizer(), 0,
                        KVPolicy(num_blocks=16)).core.runner
    assert bf16.decode_kernel is None and bf16.forward.rms_norm_kernel is None


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_rms_norm_kernel_equals_pytorch(threads: int) -> None:
    g = torch.Generator().manual_seed(threads)
    weight = torch.randn(48, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for shape in ((1, 1, 48), (1, 16, 48), (1, 300, 48), (2, 5, 4, 48)):
            x = torch.randn(shape, generator=g) * 3
            torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5), F.rms_norm(x, (48,), weight, 1e-5),
                                       rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(RuntimeError, match=r"weight must be a contiguous fp32 \(48,\) tensor"):
        kernels.rms_norm(torch.randn(2, 48), torch.randn(47), 1e-5)


def test_without_a_compiler_the_engine_says_so_and_runs_eagerly(tmp_path: Path) -> None:
    """A real failed build (no such compiler, empty extension cache): a warning, then the eager paths' answer."""
    script = (
        "import torch\n"
        "from perkunas_ray.engine.interface import KVPolicy, SamplingParams\n"
        "from perkunas_ray.engine.native import NativeEngine\n"
        "from perkunas_ray.engine.toy import toy_tokenizer\n"
        "from perkunas_ray.model.decoder import build_model\n"
        "from tests.conftest import tiny_config\n"
        "engine = NativeEngine(build_model(tiny_config(), seed=0).eval(), toy_tokenizer(), 0, KVPolicy(num_blocks=16))\n"
        "out = engine.generate([[5, 6, 7], [8, 9]], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))\n"
        "print('kernel', engine.core.runner.decode_kernel)\n"
        "print('tokens', [o.outputs[0].token_ids for o in out])\n")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": str(tmp_path / "no-such-c++")}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernel None" in result.stdout
    assert "engine CPU kernels unavailable" in result.stderr
    model = build_model(tiny_config(), seed=0).eval()
    here = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=16)).generate(
        [[5, 6, 7], [8, 9]], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert f"tokens {[o.outputs[0].token_ids for o in here]}" in result.stdout


def _decode_step(lengths: list[int], bs: int, num_blocks: int, vocab: int, g: torch.Generator):
    """A decodes-only step: sequence i has lengths[i] tokens, the last one new, over distinct random blocks."""
    blocks = torch.randperm(num_blocks, generator=g).tolist()
    items = []
    for i, n in enumerate(lengths):
        width = -(-n // bs)
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        items.append(ScheduledRequest(Request(f"r{i}", ids), n - 1, 1, blocks[:width]))
        blocks = blocks[width:]
    return StepInputBuilder(bs, torch.device("cpu"), 0.0, in_place_decodes=True).build(items)


@needs_kernels
@pytest.mark.parametrize(("qk_norm", "kv_heads", "threads"), [(False, 4, 2), (True, 2, 2), (True, 1, 1)])
def test_decode_layers_equal_the_eager_forward(qk_norm: bool, kv_heads: int, threads: int) -> None:
    """Hidden states and every block's written keys/values, for 1-5 decodes (d_ff 40: a panel past the weight's rows),
    positions past max_seq_len included (the RoPE table grows as pruning needs)."""
    cfg = ModelConfig(vocab_size=90, d_model=32, n_layers=3, n_heads=4, n_kv_heads=kv_heads, d_ff=40, max_seq_len=16,
                      qk_norm=qk_norm).validate()
    model = build_model(cfg, seed=5).eval()
    forward = DecodeForward(model, kernels, fused_decodes=True)
    g = torch.Generator().manual_seed(kv_heads)
    bs, num_blocks = 4, 64
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for lengths in ([1], [7], [3, 12], [5, 9, 2, 4], [8, 1, 30, 6, 11]):
            step = _decode_step(lengths, bs, num_blocks, cfg.vocab_size, g)
            stores = []
            for _ in range(2):
                store = KVStore(cfg.n_layers, num_blocks, bs, kv_heads, cfg.head_dim, torch.float32)
                for pool in store.keys + store.values:
                    pool.copy_(torch.randn(pool.shape, generator=torch.Generator().manual_seed(len(lengths))))
                stores.append(store)
            with torch.inference_mode():
                fused = forward.decodes(step, stores[0])
                eager = forward(step.input_ids, step.positions, step.max_position,
                                PagedAttention(stores[1], step.slots, step.groups, kernels.paged_decode_attention))
            torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
            for ours, theirs in zip(stores[0].keys + stores[0].values, stores[1].keys + stores[1].values, strict=True):
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


@needs_kernels
def test_decode_layers_refuse_bad_slots_and_weights() -> None:
    cfg = tiny_config()
    model = build_model(cfg, seed=0).eval()
    forward = DecodeForward(model, kernels, fused_decodes=True)
    store = KVStore(cfg.n_layers, 8, 4, cfg.n_kv_heads, cfg.head_dim, torch.float32)
    step = _decode_step([6], 4, 8, cfg.vocab_size, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        forward.decodes(step, store)
        step.slots[0] = 32
        with pytest.raises(RuntimeError, match=r"slots\[0\] = 32 outside \[0, 32\)"):
            forward.decodes(step, store)
        step.slots[0] = 5
        step.input_ids[0, 0] = cfg.vocab_size
        with pytest.raises(RuntimeError, match=rf"ids\[0\] = {cfg.vocab_size} outside \[0, {cfg.vocab_size}\)"):
            forward.decodes(step, store)
        step.input_ids[0, 0] = 1
        step.positions[0, 0] = 10_000  # past the RoPE table, and past what step.max_position says
        with pytest.raises(RuntimeError, match=r"positions\[0\] = 10000 outside the RoPE table's \[0, \d+\)"):
            forward.decodes(step, store)
        step.positions[0, 0] = 5
        forward.block_weights[11 + 8] = forward.block_weights[11 + 8][:, :-1]
        with pytest.raises(RuntimeError, match=r"layer 1 gate panels must be a contiguous fp32 tensor of shape "
                                               r"\[3, 32, 16\]"):
            forward.decodes(step, store)
    # Weights in another dtype have no panels: the model stays on the eager forward.
    assert DecodeForward(build_model(cfg, seed=0).eval().bfloat16(), kernels, fused_decodes=True).decode_layers is None


@needs_kernels
def test_engine_runs_few_decodes_through_the_fused_blocks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy tokens equal the eager forward's, and steps with prefill chunks or more than FUSED_DECODE_ROWS
    decodes take the eager forward."""
    model = build_model(tiny_config(), seed=0).eval()
    prompts = [[5 + i % 7, 8 + i % 5, 3][:1 + i % 3] for i in range(FUSED_DECODE_ROWS + 2)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    def run(prompts: list[list[int]], fused: bool) -> tuple[list[list[int]], list[int]]:
        engine = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=128, max_num_seqs=32))
        calls: list[int] = []
        decodes = engine.core.runner.forward.decodes
        monkeypatch.setattr(engine.core.runner.forward, "decodes",
                            lambda step, store: calls.append(step.input_ids.shape[1]) or decodes(step, store))
        if not fused:
            engine.core.runner.forward.decode_layers = None
        return [o.outputs[0].token_ids for o in engine.generate(prompts, params)], calls

    few, many = prompts[:FUSED_DECODE_ROWS - 1], prompts
    assert len(many) > FUSED_DECODE_ROWS
    tokens, calls = run(few, True)
    assert (tokens, []) == run(few, False)
    assert calls == [len(few)] * (params.max_tokens - 1)  # every step but the first (prefills)
    tokens, calls = run(many, True)
    assert (tokens, []) == run(many, False) and calls == []
    int8 = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=16, kv_dtype="int8")).core.runner
    assert int8.forward.decode_layers is None


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_rows_equal_f_linear_and_serve_few_rows(threads: int) -> None:
    """The panel product equals F.linear to rounding (output sizes off the 16-column panel, inner sizes of any
    length, 1-17 rows, a transposed weight); a step linear sends any number of rows there and keeps no oneDNN copy;
    bad shapes are named."""
    g = torch.Generator().manual_seed(threads)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for out, n in ((96, 40), (130, 384), (7, 5)):
            weight = torch.randn(out, n, generator=g)
            panels = kernels.pack_panels(weight)
            assert panels.shape == ((out + 15) // 16, n, 16)
            torch.testing.assert_close(kernels.pack_panels(weight.t().contiguous().t()), panels, rtol=0, atol=0)
            for rows in range(1, 18):
                x = torch.randn(rows, n, generator=g)
                # one sum over n per output, not pairwise: at n = 384 rounding reaches ~2e-5 (values ~20)
                torch.testing.assert_close(kernels.linear_rows(x, panels, out), F.linear(x, weight), rtol=1e-4,
                                           atol=1e-4)
            calls: list[int] = []
            linear = StepLinear(weight, wide=True, kernels=kernels)

            def tracked(x: torch.Tensor, p: torch.Tensor, o: int, calls: list[int] = calls) -> torch.Tensor:
                calls.append(x.shape[0])
                return kernels.linear_rows(x, p, o)

            linear.linear_rows = tracked
            for rows in (1, 2, 16, 40):
                x = torch.randn(1, rows, n, generator=g)
                for given in (x, x[0].t().contiguous().t()[None]):
                    torch.testing.assert_close(linear(given), F.linear(x, weight), rtol=1e-4, atol=1e-4)
            assert calls == [1, 1, 2, 2, 16, 16, 40, 40] and linear.packed is None and linear._transposed is None
    finally:
        torch.set_num_threads(before)
    with pytest.raises(RuntimeError, match=r"weight panels must be a contiguous fp32 tensor of shape \[1, 5, 16\]"):
        kernels.linear_rows(torch.randn(2, 5), kernels.pack_panels(torch.randn(8, 6)), 8)
    with pytest.raises(RuntimeError, match=r"x must be a contiguous \(M, n\) fp32 tensor"):
        kernels.linear_rows(torch.randn(5, 2).t(), kernels.pack_panels(torch.randn(8, 5)), 8)
    assert StepLinear(torch.randn(8, 5).bfloat16(), kernels=kernels).panels is None  # fp32 only


@needs_kernels
def test_argmax_rows_pick_what_greedy_picks() -> None:
    """The first largest value of each row, NaN counted as -inf (a row with nothing else: 0), as sampler.greedy; the
    sampler takes the kernel for greedy batches of fp32 rows and keeps torch's path for others."""
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.0, nan, 3.0, 1.0], [1.0, 2.0, 2.0, nan], [nan, nan, nan, nan], [-inf, -inf, -inf, -inf],
                           [-inf, nan, -5.0, inf], [4.0, 4.0, 1.0, 4.0]])
    assert kernels.argmax_rows(logits) == greedy(logits).tolist() == [2, 1, 0, 0, 3, 0]
    wide = torch.randn(5, 8192, generator=torch.Generator().manual_seed(0))
    assert kernels.argmax_rows(wide) == wide.argmax(-1).tolist()
    with pytest.raises(RuntimeError, match=r"logits must be a contiguous \(S, V\) fp32 tensor"):
        kernels.argmax_rows(wide.t())
    requests = [Request(f"r{i}", [1, 2], SamplingParams(temperature=0)) for i in range(wide.shape[0])]
    calls: list[torch.Tensor] = []
    sampler = Sampler(lambda rows: calls.append(rows) or kernels.argmax_rows(rows))
    assert sampler(wide, requests).token_ids == wide.argmax(-1).tolist() and len(calls) == 1
    assert sampler(wide.double(), requests).token_ids == wide.argmax(-1).tolist() and len(calls) == 1
