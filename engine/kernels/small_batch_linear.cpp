// float32 x [rows <= 4, k] times a plain weight [n, k] (row-major, as nn.Linear keeps it):
// decode with one to four sequences, where a step's matmuls are bound by reading the weights.
// Each weight row is streamed once, contiguously, into a few register accumulators per
// activation row; on 2 AVX2 cores that read 538 MB of SmolLM2 weights at 17.6 GB/s against
// 11.0 for oneDNN's blocked-layout GEMV in the same run (engine/backends/README.md).
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

// Output columns [c, c + WR) for all R rows: R * WR accumulators, K in steps of 8.
template <int R, int WR>
void tile(const float* x, const float* w, float* out, int64_t c, int64_t k, int64_t n) {
  __m256 acc[R][WR];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < WR; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * k + i);
    for (int j = 0; j < WR; ++j) {
      const __m256 wv = _mm256_loadu_ps(w + (c + j) * k + i);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm256_fmadd_ps(wv, xv[r], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < WR; ++j) {
      float sum = hsum(acc[r][j]);
      for (int64_t t = i; t < k; ++t) sum += w[(c + j) * k + t] * x[r * k + t];
      out[r * n + c + j] = sum;
    }
  }
}

// Eight accumulators in all, enough independent FMA chains to keep loads streaming.
template <int R>
constexpr int kTileColumns = R == 1 ? 8 : (R == 2 ? 4 : 2);

template <int R>
void columns(const float* x, const float* w, float* out, int64_t c0, int64_t c1, int64_t k,
             int64_t n) {
  constexpr int WR = kTileColumns<R>;
  int64_t c = c0;
  for (; c + WR <= c1; c += WR) tile<R, WR>(x, w, out, c, k, n);
  for (; c < c1; ++c) tile<R, 1>(x, w, out, c, k, n);
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
