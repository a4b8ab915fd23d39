// Int8 x int8 linear layer (W8A8) with integer dot products, fast on AVX2 without VNNI too.
//
// Weights: int8, one scale per output channel. Activations: quantized on the fly to int8
// with one symmetric scale per row and block of 64 input channels, so an outlier channel
// costs precision only to its own block (one scale per whole row failed the gates without
// SmoothQuant: engine/backends/README.md). Within a block the products are exact int32
// sums; each block's sum is scaled into a float32 accumulator.
//
// AVX2 has no int8 multiply-accumulate; vpmaddubsw (u8 x s8, adjacent pairs summed in
// int16) with llama.cpp's sign trick does it: |a| x (w * sign(a)) = a x w, and |a|, |w| <=
// 127 keeps a pair sum within int16 (2 * 127 * 127 < 2^15), so nothing saturates; vpmaddwd
// by ones then sums pairs of pairs into int32. With VNNI, vpdpbusd does all three in one
// instruction, with the same (exact) result. On 2 AVX2 cores (AMD EPYC) this runs a
// model's 32-row matmuls 1.8x faster than oneDNN's float32 (engine/backends/README.md).
//
// Packed weight layout: [N/8 panels][K/4 quads][8 columns x 4 k] int8, K padded to whole
// blocks. One 32-byte load meets one broadcast quad of activations; a micro-tile of
// MR rows x NR panels keeps MR * NR int32 accumulators in registers over a block.
#include "kernels.h"

#include <ATen/Parallel.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kPanel = 8;   // output columns per packed panel (one ymm of int32)
constexpr int64_t kBlock = 64;  // input channels per activation scale
constexpr int64_t kQuadsPerBlock = kBlock / 4;
constexpr int64_t kRowBlock = 64;  // rows per pass over a thread's weights (prefill chunks)

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// x [rows, k] float32 -> q [rows, k_padded] int8 (zero padded), scales [rows, blocks].
void quantize_activations(const float* x, int64_t rows, int64_t k, int64_t k_padded, int8_t* q,
                          float* scales) {
  const int64_t blocks = k_padded / kBlock;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t k0 = b * kBlock, n = std::max<int64_t>(0, std::min(k, k0 + kBlock) - k0);
        const float* src = x + r * k + k0;
        float amax = 0.f;
        for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(src[i]));
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        int8_t* dst = q + r * k_padded + k0;
        for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<int8_t>(std::nearbyint(src[i] * inv));
        for (int64_t i = n; i < kBlock; ++i) dst[i] = 0;
        scales[r * blocks + b] = amax / 127.f;
      }
    }
  });
}

// The operands of one call, shared by every tile.
struct Gemm {
  const int8_t* a;         // [rows, k_pad] quantized activations
  const float* a_scales;   // [rows, blocks]
  const int8_t* b;         // packed weights
  const float* w_scales;   // [n]
  float* out;              // [rows, n]
  int64_t k_pad, blocks, panel_bytes, n;
};

#if defined(__AVX2__)
// a x w for 32 int8 pairs, summed in fours into the 8 int32 lanes of acc.
inline __m256i dot_quads(__m256i acc, __m256i abs_a, __m256i signed_w) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, abs_a, signed_w);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, abs_a, signed_w);
#else
  const __m256i pairs = _mm256_maddubs_epi16(abs_a, signed_w);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__)) && !defined(__AVXVNNI__) && \
    (defined(__GNUC__) || defined(__clang__))
#define TESSERA_INT8_BLOCK_ASM 1
// One block (16 quads) of the 4-row x 2-panel tile, the bulk of every matmul of more than
// one row, in assembly: GCC keeps the same intrinsics' 8 accumulators in registers badly
// (spills and copies every quad) and ran 15-30 % slower on this loop (same instructions,
// same exact sums). Per quad: 2 weight loads; per row one broadcast, |a| once, then for
// each panel sign, vpmaddubsw, vpmaddwd by ones, add. Two quads per iteration, one index.
inline void block_4x2(const int8_t* w0, int64_t panel_bytes, const int8_t* a0, int64_t a_stride,
                      __m256i (&c)[4][2]) {
  static_assert(kBlock % 8 == 0, "the loop below takes two 4-byte quads an iteration");
  const int8_t* w1 = w0 + panel_bytes;
  const int8_t* a1 = a0 + a_stride;
  const int8_t* a2 = a1 + a_stride;
  const int8_t* a3 = a2 + a_stride;
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t i = 0;  // activation byte offset; the weights' is 8 times it
  asm volatile(
      "1:\n"
#define TESSERA_ROW(ADDR, ACC0, ACC1)                          \
  "vpbroadcastd " ADDR ", %%ymm12\n"                            \
  "vpsignb %%ymm12, %%ymm12, %%ymm13\n"                         \
  "vpsignb %%ymm12, %%ymm10, %%ymm14\n"                         \
  "vpsignb %%ymm12, %%ymm11, %%ymm15\n"                         \
  "vpmaddubsw %%ymm14, %%ymm13, %%ymm14\n"                      \
  "vpmaddubsw %%ymm15, %%ymm13, %%ymm15\n"                      \
  "vpmaddwd %[ones], %%ymm14, %%ymm14\n"                        \
  "vpmaddwd %[ones], %%ymm15, %%ymm15\n"                        \
  "vpaddd %%ymm14, %[" ACC0 "], %[" ACC0 "]\n"                  \
  "vpaddd %%ymm15, %[" ACC1 "], %[" ACC1 "]\n"
#define TESSERA_QUAD(OFF)                                      \
  "vmovdqu " #OFF "*8(%[w0],%[i],8), %%ymm10\n"                 \
  "vmovdqu " #OFF "*8(%[w1],%[i],8), %%ymm11\n"                 \
  TESSERA_ROW(#OFF "(%[a0],%[i])", "c00", "c01")               \
  TESSERA_ROW(#OFF "(%[a1],%[i])", "c10", "c11")               \
  TESSERA_ROW(#OFF "(%[a2],%[i])", "c20", "c21")               \
  TESSERA_ROW(#OFF "(%[a3],%[i])", "c30", "c31")
      TESSERA_QUAD(0) TESSERA_QUAD(4)
#undef TESSERA_QUAD
#undef TESSERA_ROW
      "add $8, %[i]\n"
      "cmp %[end], %[i]\n"
      "jne 1b\n"
      : [c00] "+x"(c[0][0]), [c01] "+x"(c[0][1]), [c10] "+x"(c[1][0]), [c11] "+x"(c[1][1]),
        [c20] "+x"(c[2][0]), [c21] "+x"(c[2][1]), [c30] "+x"(c[3][0]), [c31] "+x"(c[3][1]),
        [i] "+r"(i)
      : [w0] "r"(w0), [w1] "r"(w1), [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), [a3] "r"(a3),
        [ones] "x"(ones), [end] "i"(kBlock)
      : "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
}
#endif

// MR rows x NR panels of output (rows r.., panels p..), over all of K. MR * NR <= 8 int32
// accumulators leave registers for the weights, one activation quad and constants (16 ymm
// in all); each block's sums are scaled into a float32 tile in L1.
template <int MR, int NR>
void tile(const Gemm& g, int64_t r, int64_t p, int64_t cols) {
  const int8_t* b = g.b + p * g.panel_bytes;
  const int8_t* a = g.a + r * g.k_pad;
  alignas(32) float sums[MR][NR][kPanel] = {};
  for (int64_t blk = 0; blk < g.blocks; ++blk) {
    __m256i acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
#if defined(TESSERA_INT8_BLOCK_ASM)
    if constexpr (MR == 4 && NR == 2) {
      block_4x2(b + blk * kQuadsPerBlock * 32, g.panel_bytes, a + blk * kBlock, g.k_pad, acc);
    } else
#endif
    for (int64_t qd = blk * kQuadsPerBlock; qd < (blk + 1) * kQuadsPerBlock; ++qd) {
      __m256i w[NR];
      for (int j = 0; j < NR; ++j)
        w[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * g.panel_bytes + qd * 32));
      for (int i = 0; i < MR; ++i) {
        int32_t quad;
        std::memcpy(&quad, a + i * g.k_pad + 4 * qd, sizeof(quad));
        const __m256i av = _mm256_set1_epi32(quad);  // a[k..k+3] in every lane
        const __m256i abs_a = _mm256_sign_epi8(av, av);
        for (int j = 0; j < NR; ++j)
          acc[i][j] = dot_quads(acc[i][j], abs_a, _mm256_sign_epi8(w[j], av));
      }
    }
    for (int i = 0; i < MR; ++i) {
      const __m256 s = _mm256_set1_ps(g.a_scales[(r + i) * g.blocks + blk]);
      for (int j = 0; j < NR; ++j) {
        const __m256 sum = _mm256_load_ps(sums[i][j]);
        _mm256_store_ps(sums[i][j], _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][j]), s, sum));
      }
    }
  }
  const int64_t c0 = p * kPanel;
  for (int i = 0; i < MR; ++i) {
    float* o = g.out + (r + i) * g.n + c0;
    for (int64_t c = 0; c < cols; ++c) o[c] = sums[i][c / kPanel][c % kPanel] * g.w_scales[c0 + c];
  }
}
#else
// Portable form of the same tile (no AVX2): the same packed layout and exact int32 sums.
template <int MR, int NR>
void tile(const Gemm& g, int64_t r, int64_t p, int64_t cols) {
  for (int i = 0; i < MR; ++i) {
    const int8_t* a = g.a + (r + i) * g.k_pad;
    for (int64_t c = 0; c < cols; ++c) {
      const int8_t* w = g.b + (p + c / kPanel) * g.panel_bytes + (c % kPanel) * 4;
      float sum = 0.f;
      for (int64_t blk = 0; blk < g.blocks; ++blk) {
        int32_t acc = 0;
        for (int64_t qd = blk * kQuadsPerBlock; qd < (blk + 1) * kQuadsPerBlock; ++qd)
          for (int t = 0; t < 4; ++t) acc += int32_t{a[4 * qd + t]} * int32_t{w[qd * 32 + t]};
        sum += static_cast<float>(acc) * g.a_scales[(r + i) * g.blocks + blk];
      }
      g.out[(r + i) * g.n + p * kPanel + c] = sum * g.w_scales[p * kPanel + c];
    }
  }
}
#endif

// Rows [r, r + mr) x panels [p, p + nr), mr <= 4 and nr <= NR.
template <int NR>
void tile_rows(const Gemm& g, int mr, int nr, int64_t r, int64_t p, int64_t cols) {
  if (nr < NR) {
    if constexpr (NR > 1) tile_rows<NR - 1>(g, mr, nr, r, p, cols);
    return;
  }
  switch (mr) {
    case 4: tile<4, NR>(g, r, p, cols); break;
    case 3: tile<3, NR>(g, r, p, cols); break;
    case 2: tile<2, NR>(g, r, p, cols); break;
    default: tile<1, NR>(g, r, p, cols);
  }
}

}  // namespace

torch::Tensor pack_int8_weight(torch::Tensor w) {
  TORCH_CHECK(w.scalar_type() == torch::kInt8 && w.dim() == 2, "w must be [n, k] int8");
  w = w.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const int64_t n_pad = round_up(n, kPanel), k_pad = round_up(k, kBlock);
  auto packed = torch::zeros({n_pad / kPanel, k_pad / 4, 4 * kPanel}, w.options());
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = packed.data_ptr<int8_t>();
  const int64_t panel_bytes = k_pad * kPanel;
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int8_t* panel = dst + (c / kPanel) * panel_bytes + (c % kPanel) * 4;
      for (int64_t i = 0; i < k; ++i) panel[(i / 4) * 4 * kPanel + (i % 4)] = src[c * k + i];
    }
  });
  return packed;
}

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor w_scales) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2, "x must be [rows, k] float32");
  TORCH_CHECK(packed.scalar_type() == torch::kInt8 && packed.dim() == 3 &&
                  packed.size(2) == 4 * kPanel && packed.size(1) % kQuadsPerBlock == 0 &&
                  packed.is_contiguous(),
              "packed must come from pack_int8_weight");
  TORCH_CHECK(w_scales.scalar_type() == torch::kFloat32 && w_scales.dim() == 1 &&
                  w_scales.is_contiguous() && w_scales.size(0) <= packed.size(0) * kPanel &&
                  w_scales.size(0) > (packed.size(0) - 1) * kPanel,
              "w_scales must hold one float32 scale per output column");
  const int64_t rows = x.size(0), k = x.size(1), n = w_scales.size(0);
  const int64_t k_pad = packed.size(1) * 4;
  TORCH_CHECK(k <= k_pad && k_pad - k < kBlock, "x has ", k, " columns, the weight ", k_pad);
  x = x.contiguous();
  auto out = torch::empty({rows, n}, x.options());
  if (rows == 0) return out;
  const int64_t blocks = k_pad / kBlock;
  std::vector<int8_t> xq(static_cast<size_t>(rows * k_pad));
  std::vector<float> a_scales(static_cast<size_t>(rows * blocks));
  quantize_activations(x.data_ptr<float>(), rows, k, k_pad, xq.data(), a_scales.data());
  const Gemm g{xq.data(), a_scales.data(), packed.data_ptr<int8_t>(), w_scales.data_ptr<float>(),
               out.data_ptr<float>(), k_pad, blocks, k_pad * kPanel, n};

  // One row (a single stream's decode) reads weights at memory speed: 4 panels a tile keep
  // more loads in flight. More rows reuse each weight load for 4 rows (4 x 2 accumulators).
  const int nr_max = rows == 1 ? 4 : 2;
  const int64_t panels = packed.size(0);
  const int64_t groups = (panels + nr_max - 1) / nr_max;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int64_t r1 = std::min(rows, r0 + kRowBlock);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t p = grp * nr_max;
        const int nr = static_cast<int>(std::min<int64_t>(nr_max, panels - p));
        const int64_t cols = std::min<int64_t>(n - p * kPanel, nr * kPanel);
        for (int64_t r = r0; r < r1; r += 4) {
          const int mr = static_cast<int>(std::min<int64_t>(4, r1 - r));
          if (nr_max == 4)
            tile_rows<4>(g, mr, nr, r, p, cols);
          else
            tile_rows<2>(g, mr, nr, r, p, cols);
        }
      }
    }
  });
  return out;
}
