// Paged attention for decode (one query token per sequence) on CPU.
//
// Reads each sequence's K/V straight from the block pool through its block
// table: no gather copy, one pass over the keys for the scores and one over the
// values. Parallel over (sequence, KV head); the query heads sharing a KV head
// (grouped-query attention) read the same K/V rows, hot in cache. Dot products and
// exponentials are AVX2 where the CPU has it (3x the scalar loops at 32 sequences).
#include "fast_exp.h"
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// scores[t] = scale * q . keys[t] for t < ctx.
void key_scores(const float* q, const float* const* keys, int64_t ctx, int64_t head_dim,
                float scale, float* scores) {
  int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if (head_dim % 8 == 0) {
    // Four keys at a time: four dot products reduced together by one hadd tree.
    for (; t + 4 <= ctx; t += 4) {
      const float *k0 = keys[t], *k1 = keys[t + 1], *k2 = keys[t + 2], *k3 = keys[t + 3];
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = 0; i < head_dim; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
      }
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      _mm_storeu_ps(scores + t, _mm_mul_ps(sum, _mm_set1_ps(scale)));
    }
  }
#endif
  for (; t < ctx; ++t) {
    const float* key = keys[t];
    float dot = 0.0f;
    for (int64_t i = 0; i < head_dim; ++i) dot += q[i] * key[i];
    scores[t] = dot * scale;
  }
}

// Softmax of ctx scores, in place.
void softmax_in_place(float* sc, int64_t ctx) {
  const float mx = *std::max_element(sc, sc + ctx);
  float sum = 0.0f;
  int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 vsum = _mm256_setzero_ps();
  const __m256 vmx = _mm256_set1_ps(mx);
  for (; t + 8 <= ctx; t += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + t), vmx));
    _mm256_storeu_ps(sc + t, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vsum);
  for (float lane : lanes) sum += lane;
#endif
  for (; t < ctx; ++t) {
    sc[t] = std::exp(sc[t] - mx);
    sum += sc[t];
  }
  const float inv = 1.0f / sum;
  for (t = 0; t < ctx; ++t) sc[t] *= inv;
}

// out = sum over t of p[t] * values[t], head_dim floats.
void weighted_values(const float* p, const float* const* values, int64_t ctx, int64_t head_dim,
                     float* out) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // 32 dimensions at a time: four accumulators share each broadcast weight.
  for (; i + 32 <= head_dim; i += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < ctx; ++t) {
      const float* v = values[t] + i;
      const __m256 w = _mm256_set1_ps(p[t]);
      a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v), a0);
      a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8), a1);
      a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 16), a2);
      a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 24), a3);
    }
    _mm256_storeu_ps(out + i, a0);
    _mm256_storeu_ps(out + i + 8, a1);
    _mm256_storeu_ps(out + i + 16, a2);
    _mm256_storeu_ps(out + i + 24, a3);
  }
#endif
  for (; i < head_dim; ++i) {
    float acc = 0.0f;
    for (int64_t t = 0; t < ctx; ++t) acc += p[t] * values[t][i];
    out[i] = acc;
  }
}

}  // namespace

torch::Tensor paged_decode_attention(
    torch::Tensor q,             // [num_seqs, num_heads, head_dim] float32
    torch::Tensor k_cache,       // [num_blocks, block_size, num_kv_heads, head_dim]
    torch::Tensor v_cache,       // same shape as k_cache
    torch::Tensor block_tables,  // [num_seqs, max_blocks] int64
    torch::Tensor context_lens,  // [num_seqs] int64
    double scale,
    int64_t window) {            // > 0: attend to the last `window` keys only (sliding layers)
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
  TORCH_CHECK(window >= 0, "window must be 0 (none) or a number of tokens");
  const int64_t token_stride = num_kv_heads * head_dim;  // floats between tokens in a block

  // One task per (sequence, KV head): the query heads of a group share every K and V row
  // read, and one sequence alone (single-stream decode) still spreads over the threads.
  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<const float*> keys, values;  // token t's rows for this KV head
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / num_kv_heads, g = task % num_kv_heads;
      // A sliding layer reads only the window's last keys: tokens first..cl[s] - 1.
      const int64_t first = window > 0 ? std::max<int64_t>(0, cl[s] - window) : 0;
      const int64_t ctx = cl[s] - first;
      scores.resize(group * ctx);
      keys.resize(ctx);
      values.resize(ctx);
      // Row addresses once per task, block by block (no division per token and head).
      for (int64_t t = 0, pos = first; t < ctx;) {
        const int64_t b = pos / block_size;
        const int64_t base = bt[s * max_blocks + b] * block_size * token_stride + g * head_dim;
        for (int64_t j = pos % block_size; j < block_size && t < ctx; ++j, ++t, ++pos) {
          keys[t] = kp + base + j * token_stride;
          values[t] = vp + base + j * token_stride;
        }
      }
      const float* q0 = qp + (s * num_heads + g * group) * head_dim;  // [group, head_dim]
      for (int64_t h = 0; h < group; ++h)
        key_scores(q0 + h * head_dim, keys.data(), ctx, head_dim, fscale, scores.data() + h * ctx);
      for (int64_t h = 0; h < group; ++h) softmax_in_place(scores.data() + h * ctx, ctx);
      for (int64_t h = 0; h < group; ++h)
        weighted_values(scores.data() + h * ctx, values.data(), ctx, head_dim,
                        op + (s * num_heads + g * group + h) * head_dim);
    }
  });
  return out;
}
