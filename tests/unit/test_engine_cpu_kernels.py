"""The engine's C++ CPU kernels equal the eager paths they replace (decode attention: gather + SDPA, read in place
from the paged KV store; RMSNorm: PyTorch's); the engine takes them where they apply and works without them where
they cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from perkunas_ray.engine.cpu_kernels import cpu_kernels
from perkunas_ray.engine.interface import KVPolicy, SamplingParams
from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.native import NativeEngine
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
    runner = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=16)).runner
    assert runner.decode_kernel is kernels.paged_decode_attention and runner.forward.rms_norm_kernel is kernels.rms_norm
    int8 = NativeEngine(model, toy_tokenizer(), 0, KVPolicy(num_blocks=16, kv_dtype="int8")).runner
    assert int8.decode_kernel is None and int8.forward.rms_norm_kernel is kernels.rms_norm
    bf16 = NativeEngine(build_model(tiny_config(), seed=0).eval().to(torch.bfloat16), toy_tokenizer(), 0,
                        KVPolicy(num_blocks=16)).runner
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
        "print('kernel', engine.runner.decode_kernel)\n"
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
