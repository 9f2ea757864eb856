"""Paged attention over scattered KV blocks equals the dense model's attention; the KV store round-trips."""

from __future__ import annotations

import pytest
import torch

from perkunas_ray.engine.kv_store import KVStore
from perkunas_ray.engine.paged_attention import PAD_POSITION, block_key_positions, paged_attention
from perkunas_ray.model.attention import attention

pytestmark = pytest.mark.unit


def _scatter(store: KVStore, k: torch.Tensor, v: torch.Tensor, block_ids: list[int]) -> None:
    """Write dense k/v (H_kv, T, hd) into the store's blocks, token t at block_ids[t // bs]."""
    bs = store.block_size
    slots = torch.tensor([block_ids[t // bs] * bs + t % bs for t in range(k.shape[1])])
    store.write(0, slots, k.transpose(0, 1), v.transpose(0, 1))


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "softcap"), [(4, 4, 0.0), (4, 2, 0.0), (4, 1, 0.0),
                                                                 (4, 2, 5.0), (4, 1, 3.0)])
def test_paged_attention_equals_dense_attention(n_heads: int, n_kv_heads: int, softcap: float) -> None:
    g = torch.Generator().manual_seed(0)
    hd, bs, total, num_new = 8, 4, 13, 5  # a chunk of 5 queries after 8 cached tokens
    q = torch.randn(1, n_heads, num_new, hd, generator=g)
    k = torch.randn(1, n_kv_heads, total, hd, generator=g)
    v = torch.randn(1, n_kv_heads, total, hd, generator=g)
    store = KVStore(1, 10, bs, n_kv_heads, hd, torch.float32)
    block_ids = [7, 2, 9, 0]  # deliberately scattered
    _scatter(store, k[0], v[0], block_ids)
    kp, vp = store.gather(0, torch.tensor([block_ids]))
    starts = torch.tensor([[j * bs for j in range(len(block_ids))]])
    out = paged_attention(q, kp, vp, block_key_positions(starts, bs),
                          torch.arange(total - num_new, total)[None], softcap)
    rep = n_heads // n_kv_heads
    dense = attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), softcap,
                      q_offset=total - num_new)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)


def test_batched_decode_with_padding_equals_per_sequence_attention() -> None:
    g = torch.Generator().manual_seed(1)
    hd, bs, n_heads, n_kv = 8, 4, 4, 2
    lengths = [3, 9, 6]
    tables = [[5], [1, 8, 3], [0, 6]]
    store = KVStore(1, 10, bs, n_kv, hd, torch.float32)
    dense_out = []
    qs = torch.randn(3, n_heads, 1, hd, generator=g)
    for i, (length, table) in enumerate(zip(lengths, tables, strict=True)):
        k = torch.randn(n_kv, length, hd, generator=g)
        v = torch.randn(n_kv, length, hd, generator=g)
        _scatter(store, k, v, table)
        dense_out.append(attention(qs[i:i + 1], k[None].repeat_interleave(2, 1), v[None].repeat_interleave(2, 1),
                                   0.0, q_offset=length - 1))
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    starts = torch.tensor([[j * bs for j in range(len(t))] + [PAD_POSITION] * (width - len(t)) for t in tables])
    kp, vp = store.gather(0, table)
    out = paged_attention(qs, kp, vp, block_key_positions(starts, bs), torch.tensor([[n - 1] for n in lengths]))
    torch.testing.assert_close(out, torch.cat(dense_out), rtol=1e-5, atol=1e-6)


def test_int8_store_round_trips_within_quantisation_error() -> None:
    g = torch.Generator().manual_seed(2)
    store = KVStore(1, 4, 4, 2, 8, torch.float32, kv_dtype="int8")
    k = torch.randn(2, 7, 8, generator=g)
    v = torch.randn(2, 7, 8, generator=g)
    # Written token by token, as decode does: each write re-quantises the touched block.
    for t in range(7):
        slot = torch.tensor([[3, 1][t // 4] * 4 + t % 4])
        store.write(0, slot, k[:, t:t + 1].transpose(0, 1), v[:, t:t + 1].transpose(0, 1))
    kp, vp = store.gather(0, torch.tensor([[3, 1]]))
    err = (kp[0, :, :7] - k).abs().max()
    assert err <= 2.5 * k.abs().max() / 127  # one rounding step, plus re-quantisation when a scale grows
    assert (vp[0, :, :7] - v).abs().max() <= 2.5 * v.abs().max() / 127
    assert store.keys[0].dtype == torch.int8
    per_block = KVStore.bytes_per_block(1, 4, 2, 8, torch.float32, "int8")
    assert per_block * 4 == store.num_bytes
    assert KVStore.bytes_per_block(1, 4, 2, 8, torch.float32, "model") == 2 * 4 * 2 * 8 * 4
