// Linear layer over GGUF-style weight blocks, exact integer dot products with int16 activations.
//
// Weights are held in blocks of 32 input channels the way llama.cpp stores them, so a GGUF
// model's weights are represented exactly, not re-quantized:
//   4 bits: w = d * q + m, q in 0..15, one scale d and one minimum m per block (Q4_1);
//   8 bits: w = d * q, q in -127..127, one scale per block (Q8_0).
// Activations are quantized on the fly to int16, one symmetric scale s per row and block of 32
// (int8 activations cost 3 points of top-1 agreement with the float model; int16 cost none
// measurable: engine/backends/README.md). Per row r, column c and block b the products are
// summed exactly in int32 (|q| <= 127 and |a| <= 32767 keep 32 of them below 2^31), then
//   out[r, c] += isum * (d[c, b] * s[r, b])  and  out[r, c] += m[c, b] * S[r, b],
// with S = s * sum(a_q) the block's activation sum, both as fused multiply-adds in block order.
//
// Instruction paths, chosen when the file is compiled: AVX-512 VNNI (vpdpwssd, one
// instruction per 16 products), AVX-VNNI (the same in VEX form), AVX2 (vpmaddwd + vpaddd), and
// a portable loop. block_linear_reference is the same arithmetic in scalar code, in the same
// order, so every path must match it bit for bit (tests/unit/engine/test_block_linear.py
// builds each path this CPU can run).
//
// Packed weights, per panel of 8 output columns and block, the 16 "pair steps" of 8 columns x
// 2 input channels that one 16-lane int16 vector holds (lane 2c + h = column c, channel 2p + h):
//   8 bits: 16 pair steps x 16 int8, 256 bytes;
//   4 bits: 4 vectors of 16 uint16 words, 128 bytes; nibble t of word i of vector j is lane i
//   of pair step 4j + t, so shifting by 4t and masking yields a pair step in int16 directly.
// Scales are packed [panels][blocks][8] float16, as GGUF stores them (every d and m of a Q4_1 or
// Q8_0 block is a float16 value): 2 of the 4.5 bits a weight reads in single-stream decode
// would otherwise be 4.
#include "kernels.h"

#include <ATen/Parallel.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kPanel = 8;
constexpr int64_t kBlock = 32;
constexpr int64_t kPairSteps = kBlock / 2;
constexpr int64_t kRowBlock = 64;  // rows per pass over a thread's weights (prefill chunks)

// Rows a tile of 256-bit registers holds (AVX2, AVX-VNNI): 8 rows measured no faster there
// (1.35-1.48x oneDNN vs 1.36-1.63x). AVX-512 tiles go up to kWideTileRows.
constexpr int kTileRows = 4;
// A step of 5 to 8 rows (one sequence checking speculative guesses, two checking three each)
// goes through its weights once, all rows in one tile where 32 vector registers hold them:
// in tiles of 4 the fifth row cost another pass (a 5-row step 1.56x a 1-row one, 4 rows 1.27x).
constexpr int kWideTileRows = 8;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// 4 rows x 2 zmm panel pairs of accumulators: 1.6x oneDNN float32 at 32 rows (3 pairs: 1.4x)
constexpr int kMultiRowPanels = 4;
#else
constexpr int kMultiRowPanels = 2;  // 16 ymm registers: 4 rows x 2 panels
#endif

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t block_bytes(int64_t bits) { return bits == 4 ? 128 : 256; }

// The int16 weight of lane `lane` in pair step `p` of one packed panel block.
inline int32_t packed_weight(const uint8_t* blk, int64_t bits, int64_t p, int64_t lane) {
  if (bits == 8) return static_cast<int8_t>(blk[p * 16 + lane]);
  uint16_t word;
  std::memcpy(&word, blk + ((p / 4) * 16 + lane) * 2, sizeof(word));
  return (word >> (4 * (p % 4))) & 0xF;
}

struct Activations {
  std::vector<int16_t> q;  // [rows, k_pad]
  std::vector<float> s;    // [rows, blocks] scale
  std::vector<float> sum;  // [rows, blocks] s * sum of the block's q
};

// One block of n <= 32 activations to int16 with its symmetric scale; returns the sum of the
// quantized values. The scalar definition: the reference build uses it for every block.
int32_t quantize_block_scalar(const float* src, int64_t n, int16_t* dst, float* scale) {
  float amax = 0.f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(src[i]));
  const float inv = amax > 0.f ? 32767.f / amax : 0.f;
  int32_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = static_cast<int16_t>(std::nearbyint(src[i] * inv));
    total += dst[i];
  }
  for (int64_t i = n; i < kBlock; ++i) dst[i] = 0;
  *scale = amax / 32767.f;
  return total;
}

#if defined(__AVX2__)
// The same for a whole block in AVX2: the same maximum, the same products, and
// round-to-nearest-even conversion (what nearbyint does in the default rounding mode), so the
// result is the scalar one to the bit (the tests compare each build with the reference).
// Scalar code spent about a fifth of a 32-row down projection here.
int32_t quantize_block(const float* src, int16_t* dst, float* scale) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 v[4];
  __m256 mx = _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_loadu_ps(src + 8 * j);
    mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float inv = amax > 0.f ? 32767.f / amax : 0.f;
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256i q[4];
  __m256i sum = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vinv));
    sum = _mm256_add_epi32(sum, q[j]);
  }
  // packs works per 128-bit lane: [q0 lo, q1 lo, q0 hi, q1 hi]; the permute restores order.
  const __m256i lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
  const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), lo);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), hi);
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  *scale = amax / 32767.f;
  return _mm_cvtsi128_si32(s4);
}
#endif

// Activations to int16 per row and block of 32; `scalar` takes the reference's loop.
Activations quantize_activations(const float* x, int64_t rows, int64_t k, int64_t k_pad,
                                 bool scalar) {
  const int64_t blocks = k_pad / kBlock;
  Activations a{std::vector<int16_t>(static_cast<size_t>(rows * k_pad)),
                std::vector<float>(static_cast<size_t>(rows * blocks)),
                std::vector<float>(static_cast<size_t>(rows * blocks))};
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t k0 = b * kBlock, n = std::max<int64_t>(0, std::min(k, k0 + kBlock) - k0);
        const float* src = x + r * k + k0;
        int16_t* dst = a.q.data() + r * k_pad + k0;
        float* s = &a.s[r * blocks + b];
        int32_t total;
#if defined(__AVX2__)
        if (!scalar && n == kBlock)
          total = quantize_block(src, dst, s);
        else
#endif
          total = quantize_block_scalar(src, n, dst, s);
        a.sum[r * blocks + b] = *s * static_cast<float>(total);
      }
    }
  });
  return a;
}

// The operands of one call, shared by every tile.
struct Gemm {
  const Activations* a;
  const uint8_t* w;      // packed weights
  const uint16_t* d;     // [panels, blocks, 8] float16
  const uint16_t* m;     // [panels, blocks, 8] float16, or nullptr (8-bit weights)
  float* out;            // [rows, n]
  int64_t k_pad, blocks, bits, n;
};

#if defined(__AVX2__) && defined(__F16C__)
// 8 float16 scales as float32 (exact).
inline __m256 load_scales(const uint16_t* h) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define TESSERA_BLOCK_ISA "avx512_vnni"
// In assembly: where the CPU also has AVX-VNNI, GCC picks the VEX form of the intrinsic,
// which reaches only ymm0-15, and then copied every accumulator in and out of ymm16-31
// around each instruction (two moves a product step). "v" lets the EVEX form use all 32.
inline __m256i dot_pairs(__m256i acc, __m256i a, __m256i w) {
  asm("vpdpwssd %[w], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [w] "v"(w));
  return acc;
}
#elif defined(__AVXVNNI__)
#define TESSERA_BLOCK_ISA "avx_vnni"
inline __m256i dot_pairs(__m256i acc, __m256i a, __m256i w) {
  return _mm256_dpwssd_avx_epi32(acc, a, w);
}
#else
#define TESSERA_BLOCK_ISA "avx2"
inline __m256i dot_pairs(__m256i acc, __m256i a, __m256i w) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
}
#endif

// MR rows x NR panels over all of K: int32 sums per block in registers, scaled into float
// accumulators after each block.
template <int MR, int NR>
void tile(const Gemm& g, int64_t r, int64_t p0, int64_t cols) {
  const int64_t bb = block_bytes(g.bits);
  const int16_t* aq = g.a->q.data() + r * g.k_pad;
  __m256 sums[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) sums[i][j] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi16(0xF);
  for (int64_t blk = 0; blk < g.blocks; ++blk) {
    __m256i acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
    const uint8_t* wb[NR];
    for (int j = 0; j < NR; ++j) wb[j] = g.w + ((p0 + j) * g.blocks + blk) * bb;
    const int16_t* ab = aq + blk * kBlock;
    if (g.bits == 4) {
      for (int v = 0; v < 4; ++v) {
        __m256i packed[NR];
        for (int j = 0; j < NR; ++j)
          packed[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[j] + v * 32));
        for (int t = 0; t < 4; ++t) {
          const int64_t p = v * 4 + t;
          __m256i w[NR];
          for (int j = 0; j < NR; ++j)
            w[j] = t == 3 ? _mm256_srli_epi16(packed[j], 12)
                          : _mm256_and_si256(_mm256_srli_epi16(packed[j], 4 * t), nibble);
          for (int i = 0; i < MR; ++i) {
            int32_t pair;
            std::memcpy(&pair, ab + i * g.k_pad + 2 * p, sizeof(pair));
            const __m256i av = _mm256_set1_epi32(pair);
            for (int j = 0; j < NR; ++j) acc[i][j] = dot_pairs(acc[i][j], av, w[j]);
          }
        }
      }
    } else {
      for (int64_t p = 0; p < kPairSteps; ++p) {
        __m256i w[NR];
        for (int j = 0; j < NR; ++j)
          w[j] = _mm256_cvtepi8_epi16(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[j] + p * 16)));
        for (int i = 0; i < MR; ++i) {
          int32_t pair;
          std::memcpy(&pair, ab + i * g.k_pad + 2 * p, sizeof(pair));
          const __m256i av = _mm256_set1_epi32(pair);
          for (int j = 0; j < NR; ++j) acc[i][j] = dot_pairs(acc[i][j], av, w[j]);
        }
      }
    }
    for (int j = 0; j < NR; ++j) {
      const int64_t sc = ((p0 + j) * g.blocks + blk) * kPanel;
      const __m256 d = load_scales(g.d + sc);
      const __m256 m = g.m ? load_scales(g.m + sc) : _mm256_setzero_ps();
      for (int i = 0; i < MR; ++i) {
        const int64_t ai = (r + i) * g.blocks + blk;
        const __m256 ds = _mm256_mul_ps(d, _mm256_set1_ps(g.a->s[ai]));
        sums[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][j]), ds, sums[i][j]);
        if (g.m) sums[i][j] = _mm256_fmadd_ps(m, _mm256_set1_ps(g.a->sum[ai]), sums[i][j]);
      }
    }
  }
  const int64_t c0 = p0 * kPanel;
  for (int i = 0; i < MR; ++i) {
    alignas(32) float row[NR * kPanel];
    for (int j = 0; j < NR; ++j) _mm256_store_ps(row + j * kPanel, sums[i][j]);
    std::memcpy(g.out + (r + i) * g.n + c0, row, sizeof(float) * cols);
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define TESSERA_BLOCK_ZMM 1
// 512-bit form for pairs of panels (16 columns): this EPYC runs zmm vpdpwssd at the ymm
// instruction rate, twice the products (measured 0.14 ns an instruction either way).
inline __m512i dot_pairs512(__m512i acc, __m512i a, __m512i w) {
  asm("vpdpwssd %[w], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [w] "v"(w));
  return acc;
}

inline __m512i load_halves(const uint8_t* lo, const uint8_t* hi) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)), 1);
}

inline __m512 load_halves(const uint16_t* lo, const uint16_t* hi) {
  return _mm512_cvtph_ps(_mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1));
}

// One row (single-stream decode) reads each weight once, from 4 panels' block streams and
// their scales at once: fetching the block kPrefetchBlocks ahead made the 30 layers'
// products ~10 % faster (3.9-4.6 against 4.8-5.0 ms a step, alternated in one process).
constexpr int64_t kPrefetchBlocks = 4;

inline void prefetch_block(const Gemm& g, int64_t p0, int panels, int64_t blk) {
  if (blk >= g.blocks) return;
  const int64_t bb = block_bytes(g.bits);
  for (int j = 0; j < panels; ++j) {
    const int64_t at = (p0 + j) * g.blocks + blk;
    const char* w = reinterpret_cast<const char*>(g.w + at * bb);
    for (int64_t o = 0; o < bb; o += 64) _mm_prefetch(w + o, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(g.d + at * kPanel), _MM_HINT_T0);
    if (g.m) _mm_prefetch(reinterpret_cast<const char*>(g.m + at * kPanel), _MM_HINT_T0);
  }
}

// MR rows x NP pairs of panels (from panel p0), the same arithmetic as tile().
template <int MR, int NP>
void tile512(const Gemm& g, int64_t r, int64_t p0, int64_t cols) {
  const int64_t bb = block_bytes(g.bits);
  const int16_t* aq = g.a->q.data() + r * g.k_pad;
  __m512 sums[MR][NP];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NP; ++j) sums[i][j] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi16(0xF);
  for (int64_t blk = 0; blk < g.blocks; ++blk) {
    __m512i acc[MR][NP];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_si512();
    const uint8_t* wb[2 * NP];
    for (int j = 0; j < 2 * NP; ++j) wb[j] = g.w + ((p0 + j) * g.blocks + blk) * bb;
    const int16_t* ab = aq + blk * kBlock;
    if constexpr (MR == 1) prefetch_block(g, p0, 2 * NP, blk + kPrefetchBlocks);
    if (g.bits == 4) {
      for (int v = 0; v < 4; ++v) {
        __m512i packed[NP];
        for (int j = 0; j < NP; ++j) packed[j] = load_halves(wb[2 * j] + v * 32, wb[2 * j + 1] + v * 32);
        for (int t = 0; t < 4; ++t) {
          const int64_t p = v * 4 + t;
          __m512i w[NP];
          for (int j = 0; j < NP; ++j)
            w[j] = t == 3 ? _mm512_srli_epi16(packed[j], 12)
                          : _mm512_and_si512(_mm512_srli_epi16(packed[j], 4 * t), nibble);
          for (int i = 0; i < MR; ++i) {
            int32_t pair;
            std::memcpy(&pair, ab + i * g.k_pad + 2 * p, sizeof(pair));
            const __m512i av = _mm512_set1_epi32(pair);
            for (int j = 0; j < NP; ++j) acc[i][j] = dot_pairs512(acc[i][j], av, w[j]);
          }
        }
      }
    } else {
      for (int64_t p = 0; p < kPairSteps; ++p) {
        __m512i w[NP];
        for (int j = 0; j < NP; ++j)
          w[j] = _mm512_cvtepi8_epi16(_mm256_inserti128_si256(
              _mm256_castsi128_si256(
                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[2 * j] + p * 16))),
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb[2 * j + 1] + p * 16)), 1));
        for (int i = 0; i < MR; ++i) {
          int32_t pair;
          std::memcpy(&pair, ab + i * g.k_pad + 2 * p, sizeof(pair));
          const __m512i av = _mm512_set1_epi32(pair);
          for (int j = 0; j < NP; ++j) acc[i][j] = dot_pairs512(acc[i][j], av, w[j]);
        }
      }
    }
    for (int j = 0; j < NP; ++j) {
      const int64_t sc0 = ((p0 + 2 * j) * g.blocks + blk) * kPanel;
      const int64_t sc1 = ((p0 + 2 * j + 1) * g.blocks + blk) * kPanel;
      const __m512 d = load_halves(g.d + sc0, g.d + sc1);
      const __m512 m = g.m ? load_halves(g.m + sc0, g.m + sc1) : _mm512_setzero_ps();
      for (int i = 0; i < MR; ++i) {
        const int64_t ai = (r + i) * g.blocks + blk;
        const __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(g.a->s[ai]));
        sums[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), ds, sums[i][j]);
        if (g.m) sums[i][j] = _mm512_fmadd_ps(m, _mm512_set1_ps(g.a->sum[ai]), sums[i][j]);
      }
    }
  }
  const int64_t c0 = p0 * kPanel;
  for (int i = 0; i < MR; ++i) {
    alignas(64) float row[NP * 2 * kPanel];
    for (int j = 0; j < NP; ++j) _mm512_store_ps(row + j * 2 * kPanel, sums[i][j]);
    std::memcpy(g.out + (r + i) * g.n + c0, row, sizeof(float) * cols);
  }
}
#endif
#else
#define TESSERA_BLOCK_ISA "portable"
template <int MR, int NR>
void tile(const Gemm& g, int64_t r, int64_t p0, int64_t cols);
#endif

inline float half_to_float(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }

// One output (row r, column c) the plain way: the reference every vector path must equal.
float reference_output(const Gemm& g, int64_t r, int64_t c) {
  const int64_t bb = block_bytes(g.bits), panel = c / kPanel, col = c % kPanel;
  const int16_t* aq = g.a->q.data() + r * g.k_pad;
  float sum = 0.f;
  for (int64_t blk = 0; blk < g.blocks; ++blk) {
    const uint8_t* wb = g.w + (panel * g.blocks + blk) * bb;
    int32_t isum = 0;
    for (int64_t p = 0; p < kPairSteps; ++p)
      for (int64_t h = 0; h < 2; ++h)
        isum += int32_t{aq[blk * kBlock + 2 * p + h]} * packed_weight(wb, g.bits, p, 2 * col + h);
    const int64_t sc = (panel * g.blocks + blk) * kPanel + col, ai = r * g.blocks + blk;
    const float ds = half_to_float(g.d[sc]) * g.a->s[ai];
    sum = std::fma(static_cast<float>(isum), ds, sum);
    if (g.m) sum = std::fma(half_to_float(g.m[sc]), g.a->sum[ai], sum);
  }
  return sum;
}

#if !(defined(__AVX2__) && defined(__F16C__))
template <int MR, int NR>
void tile(const Gemm& g, int64_t r, int64_t p0, int64_t cols) {
  for (int i = 0; i < MR; ++i)
    for (int64_t c = 0; c < cols; ++c)
      g.out[(r + i) * g.n + p0 * kPanel + c] = reference_output(g, r + i, p0 * kPanel + c);
}
#endif

// Rows [r, r + mr) x NR panels, mr <= MR, by the largest row count that fits.
template <int MR, int NR>
void tile_mr(const Gemm& g, int mr, int64_t r, int64_t p, int64_t cols) {
  if constexpr (MR > 1) {
    if (mr < MR) return tile_mr<MR - 1, NR>(g, mr, r, p, cols);
  }
  tile<MR, NR>(g, r, p, cols);
}

#if defined(TESSERA_BLOCK_ZMM)
template <int MR, int NP>
void tile512_mr(const Gemm& g, int mr, int64_t r, int64_t p, int64_t cols) {
  if constexpr (MR > 1) {
    if (mr < MR) return tile512_mr<MR - 1, NP>(g, mr, r, p, cols);
  }
  tile512<MR, NP>(g, r, p, cols);
}
#endif

// Rows [r, r + mr) x panels [p, p + nr), mr <= kWideTileRows and nr <= NR.
template <int NR>
void tile_rows(const Gemm& g, int mr, int nr, int64_t r, int64_t p, int64_t cols) {
  if (nr < NR) {
    if constexpr (NR > 1) tile_rows<NR - 1>(g, mr, nr, r, p, cols);
    return;
  }
#if defined(TESSERA_BLOCK_ZMM)
  // Pairs of panels in 512-bit registers, an odd last panel in 256-bit ones.
  if constexpr (NR >= 2) {
    const int64_t pair_cols = std::min<int64_t>(cols, NR / 2 * 2 * kPanel);
    tile512_mr<kWideTileRows, NR / 2>(g, mr, r, p, pair_cols);  // recurses down to mr rows
    if constexpr (NR % 2 == 1) tile_rows<1>(g, mr, 1, r, p + NR - 1, cols - pair_cols);
    return;
  }
#endif
  for (int i = 0; i < mr; i += kTileRows)
    tile_mr<kTileRows, NR>(g, std::min(kTileRows, mr - i), r + i, p, cols);
}

struct Call {
  torch::Tensor out;
  Activations a;
  Gemm g;
};

Call prepare(torch::Tensor x, const torch::Tensor& packed, const torch::Tensor& d,
             const c10::optional<torch::Tensor>& m, int64_t n, int64_t bits, bool reference) {
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2, "x must be [rows, k] float32");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 3 &&
                  packed.size(2) == block_bytes(bits) && packed.is_contiguous(),
              "packed must come from pack_block_weight with the same bits");
  const int64_t panels = packed.size(0), blocks = packed.size(1);
  TORCH_CHECK(n > (panels - 1) * kPanel && n <= panels * kPanel, "n does not match the weight");
  auto check_scales = [&](const torch::Tensor& t, const char* what) {
    TORCH_CHECK(t.scalar_type() == torch::kHalf && t.is_contiguous() && t.dim() == 3 &&
                    t.size(0) == panels && t.size(1) == blocks && t.size(2) == kPanel,
                what, " must be float16 [panels, blocks, 8]");
  };
  check_scales(d, "d");
  TORCH_CHECK(bits == 4 || !m.has_value(), "8-bit blocks have no minimum");
  TORCH_CHECK(bits == 8 || m.has_value(), "4-bit blocks need their minimum");
  if (m) check_scales(*m, "m");
  const int64_t rows = x.size(0), k = x.size(1), k_pad = blocks * kBlock;
  TORCH_CHECK(k <= k_pad && k_pad - k < kBlock, "x has ", k, " columns, the weight ", k_pad);
  x = x.contiguous();
  Call call{torch::empty({rows, n}, x.options()),
            quantize_activations(x.data_ptr<float>(), rows, k, k_pad, reference), {}};
  auto halves = [](const torch::Tensor& t) {
    return reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>());
  };
  call.g = Gemm{&call.a, packed.data_ptr<uint8_t>(), halves(d),
                m ? halves(*m) : nullptr, call.out.data_ptr<float>(), k_pad,
                blocks, bits, n};
  return call;
}

}  // namespace

torch::Tensor pack_block_weight(torch::Tensor q, int64_t bits) {
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(q.dim() == 2 && (bits == 8 ? q.scalar_type() == torch::kInt8
                                         : q.scalar_type() == torch::kUInt8),
              "q must be [n, k] int8 (8 bits) or uint8 values 0..15 (4 bits)");
  q = q.contiguous();
  const int64_t n = q.size(0), k = q.size(1);
  const int64_t panels = round_up(n, kPanel) / kPanel, blocks = round_up(k, kBlock) / kBlock;
  const int64_t bb = block_bytes(bits);
  auto packed = torch::zeros({panels, blocks, bb}, q.options().dtype(torch::kUInt8));
  const uint8_t* src = reinterpret_cast<const uint8_t*>(q.data_ptr());
  uint8_t* dst = packed.data_ptr<uint8_t>();
  at::parallel_for(0, panels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        uint8_t* out = dst + (panel * blocks + blk) * bb;
        for (int64_t p = 0; p < kPairSteps; ++p)
          for (int64_t lane = 0; lane < 16; ++lane) {
            const int64_t c = panel * kPanel + lane / 2, i = blk * kBlock + 2 * p + lane % 2;
            if (c >= n || i >= k) continue;
            const uint8_t v = src[c * k + i];
            if (bits == 8) {
              out[p * 16 + lane] = v;
            } else {
              TORCH_CHECK(v <= 15, "4-bit values must be 0..15");
              uint8_t* word = out + ((p / 4) * 16 + lane) * 2;
              const int shift = 4 * (p % 4);  // little-endian uint16 word
              word[shift / 8] |= static_cast<uint8_t>(v << (shift % 8));
            }
          }
      }
  });
  return packed;
}

torch::Tensor block_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor d,
                           c10::optional<torch::Tensor> m, int64_t n, int64_t bits) {
  Call call = prepare(x, packed, d, m, n, bits, /*reference=*/false);
  const Gemm& g = call.g;
  const int64_t rows = x.size(0);
  if (rows == 0) return call.out;
  // One row (single-stream decode) is bound by reading the weights: 4 panels a tile keep more
  // loads in flight. More rows reuse each weight vector for 4 rows (4 x 2 accumulators), or
  // on AVX-512 for all of a step's 2 to 8 rows (kWideTileRows).
  const int nr_max = rows == 1 ? 4 : kMultiRowPanels;
#if defined(TESSERA_BLOCK_ZMM)
  // As few tiles of at most kWideTileRows rows as a pass of kRowBlock rows needs, as even as
  // can be: each tile unpacks the weights it reads once. Against tiles of kTileRows (9 rows
  // as 4 + 4 + 1), measured on 2 Sapphire Rapids cores, bit for bit the same output: 9 rows
  // 11-19 % faster, 16-64 rows 0-17 %, 128-512 rows within 3 %.
  const int64_t chunk = std::min(rows, kRowBlock);
  const int64_t tiles = (chunk + kWideTileRows - 1) / kWideTileRows;
  const int64_t row_tile = (chunk + tiles - 1) / tiles;
#else
  const int64_t row_tile = kTileRows;
#endif
  const int64_t panels = packed.size(0);
  const int64_t groups = (panels + nr_max - 1) / nr_max;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int64_t r1 = std::min(rows, r0 + kRowBlock);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t p = grp * nr_max;
        const int nr = static_cast<int>(std::min<int64_t>(nr_max, panels - p));
        const int64_t cols = std::min<int64_t>(n - p * kPanel, nr * kPanel);
        for (int64_t r = r0; r < r1; r += row_tile) {
          const int mr = static_cast<int>(std::min<int64_t>(row_tile, r1 - r));
          switch (nr_max) {
            case 6: tile_rows<6>(g, mr, nr, r, p, cols); break;
            case 4: tile_rows<4>(g, mr, nr, r, p, cols); break;
            default: tile_rows<2>(g, mr, nr, r, p, cols);
          }
        }
      }
    }
  });
  return call.out;
}

torch::Tensor block_linear_reference(torch::Tensor x, torch::Tensor packed, torch::Tensor d,
                                     c10::optional<torch::Tensor> m, int64_t n, int64_t bits) {
  Call call = prepare(x, packed, d, m, n, bits, /*reference=*/true);
  float* out = call.out.data_ptr<float>();
  for (int64_t r = 0; r < x.size(0); ++r)
    for (int64_t c = 0; c < n; ++c) out[r * n + c] = reference_output(call.g, r, c);
  return call.out;
}

std::string block_linear_isa() { return TESSERA_BLOCK_ISA; }
