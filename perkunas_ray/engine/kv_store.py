"""Per-layer KV tensors addressed by block id: model dtype, or int8 with per-block-per-head scales."""

from __future__ import annotations

import torch

INT8_MAX = 127.0


class KVStore:
    """Keys and values of layer l live in `(num_blocks, block_size, num_kv_heads, head_dim)` tensors.

    int8 mode stores codes plus one fp32 scale per (block, kv head) for keys and for values. A block
    fills over several steps, so each write re-quantises the blocks it touches: old codes are
    dequantised, the new tokens put in, and the block re-coded with max(|x|)/127 of what it now holds.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, kv_dtype: str = "model", device: str | torch.device = "cpu") -> None:
        if kv_dtype not in ("model", "int8"):
            raise ValueError(f"kv_dtype must be model or int8, got {kv_dtype!r}")
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.dtype, self.kv_dtype = dtype, kv_dtype
        self.quantized = kv_dtype == "int8"
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        store_dtype = torch.int8 if self.quantized else dtype
        self.keys = [torch.zeros(shape, dtype=store_dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=store_dtype, device=device) for _ in range(num_layers)]
        if self.quantized:
            self.key_scales = [torch.ones(num_blocks, num_kv_heads, device=device) for _ in range(num_layers)]
            self.value_scales = [torch.ones(num_blocks, num_kv_heads, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype, kv_dtype: str) -> int:
        if kv_dtype == "int8":
            per_tensor = block_size * num_kv_heads * head_dim + num_kv_heads * 4  # codes + fp32 scales
        else:
            per_tensor = block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * per_tensor

    @property
    def num_bytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in self.keys + self.values)
        if self.quantized:
            total += sum(t.numel() * t.element_size() for t in self.key_scales + self.value_scales)
        return total

    def write(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v (N, H_kv, hd) of N tokens at flat slots (N,) = block_id * block_size + offset."""
        # index_select / index_copy_ rather than advanced indexing: the latter is orders of magnitude
        # slower on a busy multi-threaded CPU.
        h, hd, bs = self.num_kv_heads, self.head_dim, self.block_size
        if not self.quantized:
            self.keys[layer_id].view(-1, h, hd).index_copy_(0, slots, k.to(self.dtype))
            self.values[layer_id].view(-1, h, hd).index_copy_(0, slots, v.to(self.dtype))
            return
        block_ids = torch.div(slots, bs, rounding_mode="floor")
        offsets = slots - block_ids * bs
        touched, inverse = torch.unique(block_ids, return_inverse=True)
        # Slots from a block's first new offset on hold stale data of a previous owner: zero them
        # so they cannot inflate the scale.
        first_new = torch.full((touched.numel(),), bs, dtype=offsets.dtype, device=slots.device)
        first_new = first_new.scatter_reduce(0, inverse, offsets, reduce="amin")
        stale = torch.arange(bs, device=slots.device)[None, :] >= first_new[:, None]  # (T, bs)
        rows = inverse * bs + offsets
        for codes, scales, new in ((self.keys[layer_id], self.key_scales[layer_id], k),
                                   (self.values[layer_id], self.value_scales[layer_id], v)):
            old_scale = scales.index_select(0, touched)  # (T, H_kv)
            data = codes.index_select(0, touched).float() * old_scale[:, None, :, None]  # (T, bs, H_kv, hd)
            data = data.masked_fill(stale[:, :, None, None], 0.0)
            data.view(-1, h, hd).index_copy_(0, rows, new.float())
            scale = (data.abs().amax(dim=(1, 3)) / INT8_MAX).clamp_min(1e-8)  # (T, H_kv)
            quant = torch.round(data / scale[:, None, :, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
            codes.index_copy_(0, touched, quant)
            scales.index_copy_(0, touched, scale)

    def gather(self, layer_id: int, block_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_table (B, K) -> keys, values (B, H_kv, K * block_size, hd) in the model dtype."""
        b, num = block_table.shape
        flat = block_table.reshape(-1)
        out = []
        for codes, scales in ((self.keys[layer_id], self.key_scales[layer_id] if self.quantized else None),
                              (self.values[layer_id], self.value_scales[layer_id] if self.quantized else None)):
            x = codes.index_select(0, flat)  # (B*K, bs, H_kv, hd)
            if scales is not None:
                x = (x.float() * scales.index_select(0, flat)[:, None, :, None]).to(self.dtype)
            out.append(x.view(b, num * self.block_size, self.num_kv_heads, self.head_dim).transpose(1, 2))
        return out[0], out[1]
