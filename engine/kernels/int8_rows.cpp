// The element-wise ends of a W8A8 matmul (engine/model/llama.py, Projection): activations
// quantized per row (one symmetric scale per token) before torch._int_mm, and its int32
// products scaled back to float32 after it. Each is one pass over the data; the same
// steps as torch ops took 5-6 passes and about 9 ms of a 32-sequence step here.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

std::tuple<torch::Tensor, torch::Tensor> quantize_rows(torch::Tensor x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2, "x must be [rows, k] float32");
  x = x.contiguous();
  const int64_t rows = x.size(0), k = x.size(1);
  auto q = torch::empty({rows, k}, x.options().dtype(torch::kInt8));
  auto scales = torch::empty({rows, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scales.data_ptr<float>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * k;
      float amax = 0.f;
#pragma omp simd reduction(max : amax)
      for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
      // An all-zero row keeps a tiny scale: its codes are all 0 and its products 0.
      const float scale = std::max(amax, 1e-8f) / 127.f;
      int8_t* out = qp + r * k;
#pragma omp simd
      for (int64_t i = 0; i < k; ++i) {
        // Divided, not multiplied by 1/scale, and rounded half to even: the codes torch's
        // round(x / scale) gives (|x / scale| <= 127 by construction).
        out[i] = static_cast<int8_t>(std::nearbyint(row[i] / scale));
      }
      sp[r] = scale;
    }
  });
  return {q, scales};
}

torch::Tensor dequantize_rows(torch::Tensor acc, torch::Tensor row_scales,
                              torch::Tensor col_scales) {
  TORCH_CHECK(acc.scalar_type() == torch::kInt32 && acc.dim() == 2, "acc must be [rows, n] int32");
  TORCH_CHECK(row_scales.scalar_type() == torch::kFloat32 && row_scales.numel() == acc.size(0),
              "row_scales must be float32 with one scale per row");
  TORCH_CHECK(col_scales.scalar_type() == torch::kFloat32 && col_scales.numel() == acc.size(1),
              "col_scales must be float32 with one scale per column");
  acc = acc.contiguous();
  row_scales = row_scales.contiguous();
  col_scales = col_scales.contiguous();
  const int64_t rows = acc.size(0), n = acc.size(1);
  auto out = torch::empty({rows, n}, acc.options().dtype(torch::kFloat32));
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* rs = row_scales.data_ptr<float>();
  const float* cs = col_scales.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // Parallel over columns too: one row (single-stream decode) still uses every thread.
  const int64_t grain = 4096;
  at::parallel_for(0, rows * n, grain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t r = i / n, c0 = i % n, c1 = std::min(n, c0 + (end - i));
      const float s = rs[r];
      const int32_t* a = ap + r * n;
      float* o = op + r * n;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) o[c] = static_cast<float>(a[c]) * s * cs[c];
      i += c1 - c0;
    }
  });
  return out;
}
