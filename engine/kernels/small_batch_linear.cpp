// float32 x [rows <= 4, k] times a plain weight [n, k] (row-major, as nn.Linear keeps it):
// decode with one to four sequences, where a step's matmuls are bound by reading the weights.
// Each weight row is streamed once, contiguously, into register accumulators per activation
// row; on 2 AVX2 cores this reads SmolLM2's 538 MB of weights at 14-16 GB/s
// (engine/backends/README.md).
#include "kernels.h"

#include <ATen/Parallel.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>

namespace {

constexpr int64_t kMaxRows = 4;

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Output columns [c0, c1) for all R rows, one weight row at a time: a thread reads its
// weights as one linear stream (what the hardware prefetcher follows best). Tiles of 8 rows
// read side by side (8 streams 2.3 KB apart) went at 10.6-11.1 GB/s over SmolLM2's 538 MB
// where this goes at 14.3-15.9 GB/s, and torch's sum of a tensor that size at 15.6-19.7, in
// the same runs. Bound by memory: two accumulators a row hide the FMA latency.
template <int R>
void columns(const float* x, const float* w, float* out, int64_t c0, int64_t c1, int64_t k,
             int64_t n) {
  for (int64_t c = c0; c < c1; ++c) {
    const float* wr = w + c * k;
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
      const __m256 w0 = _mm256_loadu_ps(wr + i), w1 = _mm256_loadu_ps(wr + i + 8);
      for (int r = 0; r < R; ++r) {
        acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * k + i), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + r * k + i + 8), acc[r][1]);
      }
    }
    for (; i + 8 <= k; i += 8) {
      const __m256 w0 = _mm256_loadu_ps(wr + i);
      for (int r = 0; r < R; ++r)
        acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * k + i), acc[r][0]);
    }
    for (int r = 0; r < R; ++r) {
      float sum = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
      for (int64_t t = i; t < k; ++t) sum += wr[t] * x[r * k + t];
      out[r * n + c] = sum;
    }
  }
}
#else
void columns_portable(const float* x, const float* w, float* out, int64_t rows, int64_t c0,
                      int64_t c1, int64_t k, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      float sum = 0.f;
      for (int64_t i = 0; i < k; ++i) sum += w[c * k + i] * x[r * k + i];
      out[r * n + c] = sum;
    }
}
#endif

}  // namespace

torch::Tensor small_batch_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.size(0) <= kMaxRows,
              "x must be [rows <= 4, k] float32");
  TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.dim() == 2 && w.size(1) == x.size(1),
              "w must be float32 [n, k] with x's k");
  x = x.contiguous();
  w = w.contiguous();
  const int64_t rows = x.size(0), k = x.size(1), n = w.size(0);
  auto out = torch::empty({rows, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t c0, int64_t c1) {
#if defined(__AVX2__) && defined(__FMA__)
    switch (rows) {
      case 1: columns<1>(xp, wp, op, c0, c1, k, n); break;
      case 2: columns<2>(xp, wp, op, c0, c1, k, n); break;
      case 3: columns<3>(xp, wp, op, c0, c1, k, n); break;
      case 4: columns<4>(xp, wp, op, c0, c1, k, n); break;
      default: break;
    }
#else
    columns_portable(xp, wp, op, rows, c0, c1, k, n);
#endif
  });
  return out;
}
