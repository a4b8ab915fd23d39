// Paged attention for decode (one query token per sequence) on CPU.
//
// Reads each sequence's K/V straight from the block pool through its block
// table: no gather copy, one pass over the keys for the scores and one over the
// values. Parallel over sequences; the query heads sharing a KV head
// (grouped-query attention) are served from the same K/V reads.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

torch::Tensor paged_decode_attention(
    torch::Tensor q,             // [num_seqs, num_heads, head_dim] float32
    torch::Tensor k_cache,       // [num_blocks, block_size, num_kv_heads, head_dim]
    torch::Tensor v_cache,       // same shape as k_cache
    torch::Tensor block_tables,  // [num_seqs, max_blocks] int64
    torch::Tensor context_lens,  // [num_seqs] int64
    double scale) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32, "q must be float32");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt64, "block_tables must be int64");
  TORCH_CHECK(context_lens.scalar_type() == torch::kInt64, "context_lens must be int64");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "expected q [seqs, heads, dim] and caches [blocks, block_size, kv_heads, dim]");
  TORCH_CHECK(block_tables.size(0) == q.size(0) && context_lens.size(0) == q.size(0),
              "one block table and one context length per query");
  TORCH_CHECK(q.size(2) == k_cache.size(3) && q.size(1) % k_cache.size(2) == 0,
              "head_dim must match and heads must be a multiple of kv heads");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  context_lens = context_lens.contiguous();
  // Bounds are checked with plain loops over the (small) tables: no tensor ops on
  // a path that runs once per layer per step.
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t* table = block_tables.data_ptr<int64_t>();
  const int64_t table_width = block_tables.size(1), pool_blocks = k_cache.size(0);
  for (int64_t s = 0; s < q.size(0); ++s) {
    TORCH_CHECK(lens[s] >= 1 && lens[s] <= table_width * k_cache.size(1),
                "context lengths must lie within the block tables");
    const int64_t used = (lens[s] + k_cache.size(1) - 1) / k_cache.size(1);
    for (int64_t b = 0; b < used; ++b) {
      const int64_t id = table[s * table_width + b];
      TORCH_CHECK(id >= 0 && id < pool_blocks, "block ids must lie within the pool");
    }
  }
  const int64_t num_seqs = q.size(0), num_heads = q.size(1), head_dim = q.size(2);
  const int64_t block_size = k_cache.size(1), num_kv_heads = k_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t max_blocks = block_tables.size(1);
  auto out = torch::empty({num_seqs, num_heads, head_dim}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* cl = context_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  const int64_t token_stride = num_kv_heads * head_dim;  // floats between tokens in a block

  // One task per sequence: each token's K (and V) row holds every KV head side by
  // side, so walking tokens once reads each cache line once for all heads.
  at::parallel_for(0, num_seqs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc;
    for (int64_t s = begin; s < end; ++s) {
      const int64_t ctx = cl[s];
      scores.assign(num_heads * ctx, 0.0f);
      acc.assign(num_heads * head_dim, 0.0f);
      const float* qs = qp + s * num_heads * head_dim;
      for (int64_t t = 0; t < ctx; ++t) {
        const int64_t block = bt[s * max_blocks + t / block_size];
        const float* row = kp + (block * block_size + t % block_size) * token_stride;
        for (int64_t h = 0; h < num_heads; ++h) {
          const float* key = row + (h / group) * head_dim;
          const float* qh = qs + h * head_dim;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t i = 0; i < head_dim; ++i) dot += qh[i] * key[i];
          scores[h * ctx + t] = dot * fscale;
        }
      }
      for (int64_t h = 0; h < num_heads; ++h) {  // softmax per query head, in place
        float* sc = scores.data() + h * ctx;
        const float mx = *std::max_element(sc, sc + ctx);
        float sum = 0.0f;
        for (int64_t t = 0; t < ctx; ++t) {
          sc[t] = std::exp(sc[t] - mx);
          sum += sc[t];
        }
        const float inv = 1.0f / sum;
        for (int64_t t = 0; t < ctx; ++t) sc[t] *= inv;
      }
      for (int64_t t = 0; t < ctx; ++t) {
        const int64_t block = bt[s * max_blocks + t / block_size];
        const float* row = vp + (block * block_size + t % block_size) * token_stride;
        for (int64_t h = 0; h < num_heads; ++h) {
          const float* val = row + (h / group) * head_dim;
          const float p = scores[h * ctx + t];
          float* a = acc.data() + h * head_dim;
#pragma omp simd
          for (int64_t i = 0; i < head_dim; ++i) a[i] += p * val[i];
        }
      }
      std::copy(acc.begin(), acc.end(), op + s * num_heads * head_dim);
    }
  });
  return out;
}
