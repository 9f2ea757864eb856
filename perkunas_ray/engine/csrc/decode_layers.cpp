// A decode step for a few fp32 CPU sequences, token ids to final-normed hidden states, in one call (calls
// rms_norm.cpp's and paged_decode_attention.cpp's row helpers, declared in cpu_kernels.h).
//
// Why by hand: at one or a few decodes a step's cost is dispatch, not arithmetic. The eager forward
// (decode_forward.py) runs ~25 tensor ops per block from Python (norms, three projections and their views,
// RoPE's multiplies and roll, the KV writes, attention, residual adds, the MLP's activation), 5-20 us each, while
// the block's weights stream through in ~0.15 ms: at one stream of the speed preset the two blocks took 0.86 ms
// of a 1.4 ms step. Here a block is five parallel passes (q/k/v, attention, o, gate/up, down) with the row-wise
// work between them (norms, RoPE, KV writes, SiLU) done in place on a few rows. PyTorch has no fused CPU decode
// block; inductor would need a compile per shape and still calls the projections one by one.
//
// The embedding rows, the RoPE rows at each position and the final RMSNorm are done here too: as tensor ops from
// Python they were four more calls a step (two index_selects, the embedding, the norm), each 10-40 us in a step whose
// kernels have just streamed the weights through the cache, and each a point where a serving replica's event loop
// could take the GIL and make the step wait for its SSE work.
//
// Same math, in the same order, as the eager path: the embedding row, then per block RMSNorm, q/k/v projections,
// optional per-head q/k RMSNorm, RoPE (x * cos + roll(x, hd / 2) * sin, sin's first half negated), keys/values
// written to their slots, attention
// over each sequence's first `lengths[b]` slots, o projection added to the residual, RMSNorm, SiLU(gate) * up,
// down projection added; last the final RMSNorm. Only the summation order differs (float rounding).

#include <torch/extension.h>

#include "cpu_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

// The projections read their weights as panels: a (out, n) weight packed once into (ceil(out / 16), n, 16), 16
// output columns side by side (zero-padded past `out`). A few rows times a panel is then broadcast-and-FMA into
// 16-wide accumulators, with no horizontal sums, and each thread streams whole panels: with dot products over the
// weight's rows (one horizontal sum per row and output), the speed preset's head took 0.78 ms from memory at one
// row and 2.25 ms in cache at 16, against 0.46 and 0.85 as panels (2 threads, median of 100).
//
// Compiled twice, for AVX2 + FMA and for the baseline x86-64, and picked at load time by the CPU's features (GCC's
// target_clones), so one build runs on any x86-64 machine and at full width where the CPU has it. The ISA level
// x86-64-v3 (AVX2, FMA, ...) is tested by feature; "arch=haswell" would be tested by CPU model, and AMD parts with
// AVX2 then ran the baseline clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PERKUNAS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PERKUNAS_CPU_CLONES
#endif

namespace {

constexpr int kWeightsPerBlock = 11;  // input norm, q, k, v, q norm, k norm, o, post-attention norm, gate, up, down
constexpr int64_t kPanel = 16;        // output columns per panel: two AVX2 registers of accumulators per row

int64_t num_panels(int64_t out) { return (out + kPanel - 1) / kPanel; }

// y[r, 0:cols] (+)= x[r] (R rows, stride ldx) @ C consecutive panels (each (n, 16)) for r < R: R * C * 16
// accumulators, each x value broadcast against a panel row.
template <int R, int C>
inline __attribute__((always_inline)) void panel_block(const float* panels, int64_t n, const float* x, int64_t ldx,
                                                       float* y, int64_t ldy, int64_t cols, bool accumulate) {
  float acc[R][C * kPanel] = {};
  for (int64_t i = 0; i < n; ++i) {
    for (int r = 0; r < R; ++r) {
      const float b = x[r * ldx + i];
      for (int c = 0; c < C; ++c) {
        const float* w = panels + (c * n + i) * kPanel;
#pragma omp simd
        for (int j = 0; j < kPanel; ++j) acc[r][c * kPanel + j] += b * w[j];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + r * ldy;
    for (int64_t j = 0; j < cols; ++j) out[j] = accumulate ? out[j] + acc[r][j] : acc[r][j];
  }
}

// y (m rows, stride ldy)[:, p * 16 ...] (+)= x (m, n) @ panels [begin, end) of a weight with `out` columns. One or
// two rows take several panels at a time (more independent accumulators: the loads, not the adds, then bound it);
// more rows go six at a time through one panel (12 accumulators of the 16 AVX2 registers).
PERKUNAS_CPU_CLONES void panel_rows(const float* panels, int64_t n, int64_t out, const float* x, int64_t m, float* y,
                                    int64_t ldy, int64_t begin, int64_t end, bool accumulate) {
  const auto cols = [&](int64_t p, int64_t count) { return std::min(count * kPanel, out - p * kPanel); };
  const auto at = [&](int64_t p) { return panels + p * n * kPanel; };
  int64_t p = begin;
  if (m <= 2) {
    for (; p + 2 <= end; p += 2) {
      if (m == 1) panel_block<1, 2>(at(p), n, x, n, y + p * kPanel, ldy, cols(p, 2), accumulate);
      else panel_block<2, 2>(at(p), n, x, n, y + p * kPanel, ldy, cols(p, 2), accumulate);
    }
  }
  for (; p < end; ++p) {
    for (int64_t r0 = 0; r0 < m; r0 += 6) {
      const float* xs = x + r0 * n;
      float* ys = y + r0 * ldy + p * kPanel;
      switch (std::min<int64_t>(6, m - r0)) {
        case 6: panel_block<6, 1>(at(p), n, xs, n, ys, ldy, cols(p, 1), accumulate); break;
        case 5: panel_block<5, 1>(at(p), n, xs, n, ys, ldy, cols(p, 1), accumulate); break;
        case 4: panel_block<4, 1>(at(p), n, xs, n, ys, ldy, cols(p, 1), accumulate); break;
        case 3: panel_block<3, 1>(at(p), n, xs, n, ys, ldy, cols(p, 1), accumulate); break;
        case 2: panel_block<2, 1>(at(p), n, xs, n, ys, ldy, cols(p, 1), accumulate); break;
        default: panel_block<1, 1>(at(p), n, xs, n, ys, ldy, cols(p, 1), accumulate); break;
      }
    }
  }
}

struct Projection {
  const float* panels;  // (num_panels(rows), n, 16)
  int64_t rows;         // the weight's output rows
  int64_t column;       // its first output column in y
};

// y (m, ldy) [, column : column + rows] (+)= x (m, n) @ weight.T for each projection, all panels split over threads.
void project(const std::vector<Projection>& projections, const float* x, int64_t m, int64_t n, float* y,
             int64_t ldy, bool accumulate) {
  int64_t total = 0;
  for (const auto& p : projections) total += num_panels(p.rows);
  at::parallel_for(0, total, 2, [&](int64_t begin, int64_t end) {
    int64_t first = 0;  // the projection's first panel in [0, total)
    for (const auto& p : projections) {
      const int64_t count = num_panels(p.rows);
      const int64_t lo = std::max(begin, first), hi = std::min(end, first + count);
      if (lo < hi) panel_rows(p.panels, n, p.rows, x, m, y + p.column, ldy, lo - first, hi - first, accumulate);
      first += count;
    }
  });
}

// out[h] = x[h] * cos + roll(x[h], hd / 2) * sin for `heads` heads of `dim` (sin's first half negated).
void rope_heads(const float* x, const float* cos, const float* sin, float* out, int64_t heads, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const float* xs = x + h * dim;
    float* o = out + h * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = xs[d] * cos[d] + xs[(d + half) % dim] * sin[d];
  }
}

// t's data, checked to be a contiguous fp32 tensor of `shape`; the error names it (and its block, when layer >= 0).
const float* floats(const torch::Tensor& t, const char* name, int64_t layer, std::vector<int64_t> shape) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.sizes() == c10::IntArrayRef(shape),
              layer >= 0 ? "layer " + std::to_string(layer) + " " : std::string(), name,
              " must be a contiguous fp32 tensor of shape ", c10::IntArrayRef(shape), ", got ", t.sizes(), " ",
              t.scalar_type());
  return t.data_ptr<float>();
}

}  // namespace

// ids, positions (B,): the step's B decode tokens and their positions -> the final-normed hidden states (B, D).
// embedding (V, D); cos/sin (P, hd): the RoPE tables (sin's first half negated), P > every position;
// weights: kWeightsPerBlock per block (q/k norms: empty tensors without qk-norm); k_pools/v_pools: each block's
// (num_blocks, block_size, H_kv, hd) KV; slots (B,) where each token's KV goes; block_table (B, K) and lengths (B,)
// as paged_decode_attention reads them; final_norm (D,).
torch::Tensor decode_layers(const torch::Tensor& ids, const torch::Tensor& embedding, const torch::Tensor& positions,
                            const torch::Tensor& cos, const torch::Tensor& sin,
                            const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& k_pools,
                            const std::vector<torch::Tensor>& v_pools, const torch::Tensor& slots,
                            const torch::Tensor& block_table, const torch::Tensor& lengths, int64_t heads, double eps,
                            const torch::Tensor& final_norm) {
  const NoGil no_gil;
  TORCH_CHECK(embedding.dim() == 2 && embedding.scalar_type() == torch::kFloat32 && embedding.is_contiguous(),
              "embedding must be a contiguous (V, D) fp32 tensor, got ", embedding.sizes(), " ",
              embedding.scalar_type());
  TORCH_CHECK(ids.dim() == 1, "ids must be a (B,) int64 tensor, got ", ids.sizes());
  const int64_t batch = ids.size(0), model_dim = embedding.size(1), vocab = embedding.size(0);
  const int64_t layers = static_cast<int64_t>(k_pools.size());
  TORCH_CHECK(layers >= 1 && static_cast<int64_t>(v_pools.size()) == layers &&
                  static_cast<int64_t>(weights.size()) == layers * kWeightsPerBlock,
              "expected ", kWeightsPerBlock, " weights and one key and one value pool per block, got ",
              weights.size(), " weights, ", k_pools.size(), " and ", v_pools.size(), " pools");
  TORCH_CHECK(heads >= 1 && model_dim % heads == 0, "heads = ", heads, " does not divide D = ", model_dim);
  const int64_t dim = model_dim / heads;
  const auto& pool0 = k_pools[0];
  TORCH_CHECK(pool0.dim() == 4 && pool0.size(3) == dim && heads % pool0.size(2) == 0,
              "key pools must be (num_blocks, block_size, H_kv, ", dim, ") with H_kv dividing ", heads, ", got ",
              pool0.sizes());
  const int64_t num_blocks = pool0.size(0), block_size = pool0.size(1), kv_heads = pool0.size(2);
  const int64_t q_width = heads * dim, kv_width = kv_heads * dim;
  const int64_t ffn = weights[10].dim() == 3 ? weights[10].size(1) : 0;  // down's panels: (D / 16, ffn, 16)
  TORCH_CHECK(block_table.dim() == 2 && block_table.scalar_type() == torch::kInt64 && block_table.is_contiguous() &&
                  block_table.size(0) == batch,
              "block_table must be a contiguous (", batch, ", K) int64 tensor, got ", block_table.sizes());
  for (const auto* t : {&ids, &positions, &lengths, &slots}) {
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == torch::kInt64 && t->is_contiguous() && t->size(0) == batch,
                "ids, positions, lengths and slots must be contiguous (", batch, ",) int64 tensors, got ",
                t->sizes());
  }
  TORCH_CHECK(cos.dim() == 2 && cos.size(1) == dim, "cos must be a (P, ", dim, ") table, got ", cos.sizes());
  const int64_t table_rows = cos.size(0);
  const float* cos_table = floats(cos, "cos", -1, {table_rows, dim});
  const float* sin_table = floats(sin, "sin", -1, {table_rows, dim});
  const float* final_weight = floats(final_norm, "final norm", -1, {model_dim});
  const int64_t* token_ids = ids.data_ptr<int64_t>();
  const int64_t* token_positions = positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(token_ids[b] >= 0 && token_ids[b] < vocab, "ids[", b, "] = ", token_ids[b], " outside [0, ", vocab,
                ")");
    TORCH_CHECK(token_positions[b] >= 0 && token_positions[b] < table_rows, "positions[", b, "] = ",
                token_positions[b], " outside the RoPE table's [0, ", table_rows, ")");
  }
  const int64_t* table = block_table.data_ptr<int64_t>();
  const int64_t* lens = lengths.data_ptr<int64_t>();
  const int64_t* slot_ids = slots.data_ptr<int64_t>();
  const int64_t width = block_table.size(1);
  check_decode_table(table, lens, batch, width, block_size, num_blocks);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(slot_ids[b] >= 0 && slot_ids[b] < num_blocks * block_size, "slots[", b, "] = ", slot_ids[b],
                " outside [0, ", num_blocks * block_size, ")");
  }
  const float eps_f = static_cast<float>(eps), scale = 1.f / std::sqrt(static_cast<float>(dim));

  auto residual = torch::empty({batch, model_dim}, embedding.options());
  float* xs = residual.data_ptr<float>();
  const float* rows = embedding.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    std::copy(rows + token_ids[b] * model_dim, rows + (token_ids[b] + 1) * model_dim, xs + b * model_dim);
  }
  std::vector<float> normed(batch * std::max(model_dim, ffn)), qkv(batch * (q_width + 2 * kv_width));
  std::vector<float> queries(batch * q_width), attended(batch * q_width), gate_up(batch * 2 * ffn);
  const int64_t qkv_width = q_width + 2 * kv_width;
  for (int64_t l = 0; l < layers; ++l) {
    const torch::Tensor* w = weights.data() + l * kWeightsPerBlock;
    const float* input_norm = floats(w[0], "input norm", l, {model_dim});
    const float* wq = floats(w[1], "q panels", l, {num_panels(q_width), model_dim, kPanel});
    const float* wk = floats(w[2], "k panels", l, {num_panels(kv_width), model_dim, kPanel});
    const float* wv = floats(w[3], "v panels", l, {num_panels(kv_width), model_dim, kPanel});
    const bool qk_norm = w[4].numel() > 0;
    const float* q_norm = qk_norm ? floats(w[4], "q norm", l, {dim}) : nullptr;
    const float* k_norm = qk_norm ? floats(w[5], "k norm", l, {dim}) : nullptr;
    const float* wo = floats(w[6], "o panels", l, {num_panels(model_dim), q_width, kPanel});
    const float* post_norm = floats(w[7], "post-attention norm", l, {model_dim});
    const float* wg = floats(w[8], "gate panels", l, {num_panels(ffn), model_dim, kPanel});
    const float* wu = floats(w[9], "up panels", l, {num_panels(ffn), model_dim, kPanel});
    const float* wd = floats(w[10], "down panels", l, {num_panels(model_dim), ffn, kPanel});
    for (const auto* pool : {&k_pools[l], &v_pools[l]}) {
      TORCH_CHECK(pool->scalar_type() == torch::kFloat32 && pool->is_contiguous() && pool->sizes() == pool0.sizes(),
                  "layer ", l, " KV pools must be contiguous fp32 tensors of shape ", pool0.sizes(), ", got ",
                  pool->sizes());
    }
    float* keys = k_pools[l].data_ptr<float>();
    float* values = v_pools[l].data_ptr<float>();

    rms_norm_rows(xs, input_norm, normed.data(), batch, model_dim, eps_f);
    project({{wq, q_width, 0}, {wk, kv_width, q_width}, {wv, kv_width, q_width + kv_width}}, normed.data(), batch,
            model_dim, qkv.data(), qkv_width, false);
    for (int64_t b = 0; b < batch; ++b) {
      float* q = qkv.data() + b * qkv_width;
      float* k = q + q_width;
      const float* v = k + kv_width;
      if (qk_norm) {
        rms_norm_rows(q, q_norm, q, heads, dim, eps_f);
        rms_norm_rows(k, k_norm, k, kv_heads, dim, eps_f);
      }
      const float* c = cos_table + token_positions[b] * dim;
      const float* s = sin_table + token_positions[b] * dim;
      rope_heads(q, c, s, queries.data() + b * q_width, heads, dim);
      rope_heads(k, c, s, keys + slot_ids[b] * kv_width, kv_heads, dim);
      std::copy(v, v + kv_width, values + slot_ids[b] * kv_width);
    }
    paged_decode_attention_into(queries.data(), keys, values, table, lens, batch, heads, dim, kv_heads, block_size,
                                width, scale, attended.data());
    project({{wo, model_dim, 0}}, attended.data(), batch, q_width, xs, model_dim, true);
    rms_norm_rows(xs, post_norm, normed.data(), batch, model_dim, eps_f);
    project({{wg, ffn, 0}, {wu, ffn, ffn}}, normed.data(), batch, model_dim, gate_up.data(), 2 * ffn, false);
    for (int64_t b = 0; b < batch; ++b) {
      const float* g = gate_up.data() + b * 2 * ffn;
      float* a = normed.data() + b * ffn;
      for (int64_t f = 0; f < ffn; ++f) a[f] = g[f] / (1.f + std::exp(-g[f])) * g[ffn + f];
    }
    project({{wd, model_dim, 0}}, normed.data(), batch, ffn, xs, model_dim, true);
  }
  rms_norm_rows(xs, final_weight, xs, batch, model_dim, eps_f);
  return residual;
}

// The first index of each row's largest value, NaN counted as -inf (a row of NaN and -inf: 0): greedy sampling's
// argmax in one call, where sampler.greedy makes six tensor calls (argmax, unsqueeze, gather, isnan, any, tolist).
std::vector<int64_t> argmax_rows(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == torch::kFloat32 && logits.is_contiguous(),
              "logits must be a contiguous (S, V) fp32 tensor, got ", logits.sizes(), " ", logits.scalar_type());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const float* values = logits.data_ptr<float>();
  std::vector<int64_t> best(rows, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = values + r * vocab;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t v = 0; v < vocab; ++v) {
      if (row[v] > top) {  // false for NaN
        top = row[v];
        best[r] = v;
      }
    }
  }
  return best;
}

// x (M, n) @ weight.T for a few rows, fp32 on CPU, the weight as pack_panels made it (`out` its rows): the blocks'
// projections, for a step's other linears (the head).
torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& panels, int64_t out) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "x must be a contiguous (M, n) fp32 tensor, got ", x.sizes(), " ", x.scalar_type());
  const float* w = floats(panels, "weight panels", -1, {num_panels(out), x.size(1), kPanel});
  auto y = torch::empty({x.size(0), out}, x.options());
  const NoGil no_gil;
  project({{w, out, 0}}, x.data_ptr<float>(), x.size(0), x.size(1), y.data_ptr<float>(), out, false);
  return y;
}

// weight (out, n) -> its panels (ceil(out / 16), n, 16), zero past `out`: the layout the projections read.
torch::Tensor pack_panels(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat32,
              "weight must be an (out, n) fp32 tensor, got ", weight.sizes(), " ", weight.scalar_type());
  return torch::constant_pad_nd(weight.contiguous(), {0, 0, 0, num_panels(weight.size(0)) * kPanel - weight.size(0)})
      .view({num_panels(weight.size(0)), kPanel, weight.size(1)})
      .transpose(1, 2)
      .contiguous();
}
