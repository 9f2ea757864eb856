// The CPU kernels' shared declarations: the entry points Python binds (engine/cpu_kernels.py) and the row
// helpers one file calls in another. Every .cpp here includes it, so the files compile in any order, alone or as
// the one unit load_inline builds.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <vector>

// ---- row helpers (raw fp32 pointers; inputs already checked) -------------------------------------------------

// rms_norm.cpp: out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight for `rows` rows of `dim` (out may be x).
void rms_norm_rows(const float* x, const float* weight, float* out, int64_t rows, int64_t dim, float eps);

// paged_decode_attention.cpp: checks a step's block table and key counts against a pool of `num_blocks` blocks.
void check_decode_table(const int64_t* table, const int64_t* lens, int64_t batch, int64_t width, int64_t block_size,
                        int64_t num_blocks);

// paged_decode_attention.cpp: out (B, H, hd) = attention of q (B, H, hd) over each sequence's first lens[b] slots
// of pools (num_blocks, block_size, H_kv, hd) through block table (B, width).
void paged_decode_attention_into(const float* qs, const float* ks, const float* vs, const int64_t* table,
                                 const int64_t* lens, int64_t batch, int64_t heads, int64_t dim, int64_t kv_heads,
                                 int64_t block_size, int64_t width, float scale_f, float* os);

// ---- entry points (bound to Python as CpuKernels' fields) -------------------------------------------------------

// The entry points that run long (a step's blocks, a GEMV, decode attention) drop the GIL for their whole body;
// pybind11 takes it back before the result becomes a Python object, and they touch no Python object. A serving
// replica's event loop (HTTP, SSE) then runs beside a step's kernels instead of waiting up to a whole step for the
// lock. rms_norm keeps it: it takes microseconds, and a thread that lets go of the GIL may wait for the event loop's
// next switch interval to get it back.
using NoGil = pybind11::gil_scoped_release;

torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_pool,
                                     const torch::Tensor& v_pool, const torch::Tensor& block_table,
                                     const torch::Tensor& lengths, double scale);

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

torch::Tensor decode_layers(const torch::Tensor& ids, const torch::Tensor& embedding, const torch::Tensor& positions,
                            const torch::Tensor& cos, const torch::Tensor& sin,
                            const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& k_pools,
                            const std::vector<torch::Tensor>& v_pools, const torch::Tensor& slots,
                            const torch::Tensor& block_table, const torch::Tensor& lengths, int64_t heads, double eps,
                            const torch::Tensor& final_norm);

std::vector<int64_t> argmax_rows(const torch::Tensor& logits);

torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& panels, int64_t out);

torch::Tensor pack_panels(const torch::Tensor& weight);
