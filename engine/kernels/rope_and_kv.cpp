// Two small per-layer steps of the eager CPU path, one call each: rotating Q and K in place
// (as torch ops: slice, neg, cat, two muls, an add and a copy, about 80 us a layer at 32
// rows) and writing this step's K and V into the paged pool (two index_copy_ calls).
#include "kernels.h"

#include <ATen/Parallel.h>

void rope_in_place(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t heads) {
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat32 && qkv.dim() == 3 && qkv.stride(2) == 1,
              "qkv must be [tokens, heads, head_dim] float32 with unit-stride head_dim");
  TORCH_CHECK(heads <= qkv.size(1), "more heads to rotate than qkv holds");
  const int64_t n = qkv.size(0), head_dim = qkv.size(2), half = head_dim / 2;
  TORCH_CHECK(head_dim % 2 == 0, "head_dim must be even");
  cos = cos.reshape({n, head_dim}).contiguous();
  sin = sin.reshape({n, head_dim}).contiguous();
  TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32,
              "cos and sin must be float32 [tokens, head_dim]");
  float* base = qkv.data_ptr<float>();
  const int64_t token_stride = qkv.stride(0), head_stride = qkv.stride(1);
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cp + t * head_dim;
      const float* s = sp + t * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* x = base + t * token_stride + h * head_stride;
        // Half-split rotation: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c[i] - x2 * s[i];
          x[i + half] = x2 * c[i + half] + x1 * s[i + half];
        }
      }
    }
  });
}

void store_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k,
              torch::Tensor v) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.dim() == 4 &&
                  k_cache.scalar_type() == torch::kFloat32 &&
                  v_cache.scalar_type() == torch::kFloat32,
              "caches must be contiguous float32 [blocks, block_size, kv_heads, head_dim]");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.scalar_type() == torch::kFloat32 &&
                  v.scalar_type() == torch::kFloat32 && k.stride(2) == 1 && v.stride(2) == 1,
              "k and v must be float32 [tokens, kv_heads, head_dim], unit-stride head_dim");
  TORCH_CHECK(k.size(1) == k_cache.size(2) && k.size(2) == k_cache.size(3),
              "k and v heads must match the cache");
  TORCH_CHECK(slots.scalar_type() == torch::kInt64 && slots.dim() == 1 &&
                  slots.size(0) == k.size(0),
              "slots must be int64 with one slot per token");
  slots = slots.contiguous();
  const int64_t n = k.size(0), kv_heads = k.size(1), head_dim = k.size(2);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1), row = kv_heads * head_dim;
  const int64_t* sl = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t)
    TORCH_CHECK(sl[t] >= 0 && sl[t] < num_slots, "slot ", sl[t], " lies outside the pool");
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        const float* ks = kp + t * k.stride(0) + h * k.stride(1);
        const float* vs = vp + t * v.stride(0) + h * v.stride(1);
        float* kd = kc + sl[t] * row + h * head_dim;
        float* vd = vc + sl[t] * row + h * head_dim;
        std::copy(ks, ks + head_dim, kd);
        std::copy(vs, vs + head_dim, vd);
      }
    }
  });
}
