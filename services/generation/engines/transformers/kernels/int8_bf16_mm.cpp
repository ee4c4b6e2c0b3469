// y = x @ (w * s)^T for int8 weights w (N, K, one bf16 scale per output row) and bf16 activations
// x (M, K) -> y (M, N) bf16: what torch._weight_int8pack_mm computes, for CPUs with AVX512-BF16
// (below) or with AVX2 and FMA (the #else branch; int8_kernel.py picks the build).
//
// Why (measured on 2 Zen 4 cores, SmolLM2-135M): torch's kernel takes rows four at a time and widens
// every weight to float32 once per block of rows, so a decode step of 8 rows cost 2.3x one of a
// single row. Here each weight is widened once per step for up to 8 rows (int8 -> float32 -> bf16,
// exact: every int8 value is a bf16), and the rows multiply with VDPBF16PS, two products per lane,
// accumulated in float32; the scale is applied once per output. More than 8 rows (prompt chunks)
// widen each tile of weights once into an L1-sized buffer that every block of rows reads, so the
// widening is paid once per call whatever M is, and no bf16 copy of the weights is kept. A row's
// result does not depend on the rows it is batched with (each row accumulates in the same order
// whatever M is, in registers or from the buffer).
// Built by services/generation/int8_kernel.py with torch.utils.cpp_extension; threads come from
// torch's own OpenMP pool (at::parallel_for), so the decode loop keeps a single team.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <vector>
#include <torch/library.h>

namespace {

// The decode layout ("tiled": int8_kernel.tile_rows): weight rows in groups of 4, each group stored
// as K/32 blocks of [4 rows x 32 bytes], so the 4 outputs of a group read one sequential stream.
// Why (2 Zen 4 cores, SmolLM2-135M's layer shapes, one row): row-major, a group reads 4 streams K
// bytes apart and the step's multiplications ran at ~16 GB/s; tiled, ~21-28 GB/s (a plain 2-thread
// read of the same bytes: ~28-33), and software prefetching only got in the way of the hardware's.
constexpr int64_t kGroup = 4;

template <bool TILED>
inline const int8_t* weight_at(const int8_t* w, int64_t K, int64_t n, int64_t k) {
  if (TILED) return w + (n & ~(kGroup - 1)) * K + (k >> 5) * (32 * kGroup) + (n & (kGroup - 1)) * 32 + (k & 31);
  return w + n * K + k;
}

#if defined(__AVX512BF16__)

constexpr int kStep = 32;       // K elements per VDPBF16PS (32 bf16 in a zmm)
constexpr int kPrefetch = 256;  // bytes ahead in each weight row: the rows stream from memory

inline __m512bh widen(const int8_t* p) {
  __m256i b8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b8)));
  __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b8, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// M rows of x against NB consecutive weight rows starting at n0: M * NB accumulators in registers.
template <int M, int NB, bool TILED = false>
inline void tile(const at::BFloat16* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y,
                 int64_t K, int64_t N, int64_t n0) {
  __m512 acc[M][NB];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kStep) {
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) {
      const int8_t* p = weight_at<TILED>(w, K, n0 + j, k);
      if (!TILED && k + kPrefetch < K) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
      wv[j] = widen(p);
    }
    for (int m = 0; m < M; ++m) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(x + m * K + k));
      for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv, wv[j]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    float scale = static_cast<float>(s[n0 + j]);
    for (int m = 0; m < M; ++m)
      y[m * N + n0 + j] = static_cast<at::BFloat16>(_mm512_reduce_add_ps(acc[m][j]) * scale);
  }
}

template <int M, int NB>
void rows(const at::BFloat16* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t K, int64_t N) {
  const int64_t tiles = N / NB;
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) tile<M, NB>(x, w, s, y, K, N, t * NB);
  });
  for (int64_t n = tiles * NB; n < N; ++n) tile<M, 1>(x, w, s, y, K, N, n);
}

// Many rows (prompt chunks): each tile of kWide weight rows is widened once into a bf16 buffer
// (L1-sized: 4 x K x 2 bytes) and every block of rows reads it from there, so widening costs once
// per call whatever M is, and memory traffic stays one byte a weight.
constexpr int kWide = 4;
constexpr int kRowBlock = 6;  // tiled decode rows per pass over a group: 24 sums + 4 weights + 1 row

template <int M>
inline void from_buffer(const at::BFloat16* x, const __m512bh* wb, const at::BFloat16* s, at::BFloat16* y,
                        int64_t K, int64_t N, int64_t n0, int nb) {
  __m512 acc[M][kWide];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < kWide; ++j) acc[m][j] = _mm512_setzero_ps();
  const int64_t steps = K / kStep;
  for (int64_t k = 0; k < steps; ++k) {
    __m512bh wv[kWide];
    for (int j = 0; j < kWide; ++j) wv[j] = wb[j * steps + k];
    for (int m = 0; m < M; ++m) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(x + m * K + k * kStep));
      for (int j = 0; j < kWide; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv, wv[j]);
    }
  }
  for (int j = 0; j < nb; ++j) {
    float scale = static_cast<float>(s[n0 + j]);
    for (int m = 0; m < M; ++m)
      y[m * N + n0 + j] = static_cast<at::BFloat16>(_mm512_reduce_add_ps(acc[m][j]) * scale);
  }
}

template <bool TILED>
void many_rows(const at::BFloat16* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t M,
               int64_t K, int64_t N) {
  const int64_t steps = K / kStep, tiles = (N + kWide - 1) / kWide;
  at::parallel_for(0, tiles, 4, [&](int64_t begin, int64_t end) {
    std::vector<__m512bh> wb(kWide * steps);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kWide;
      const int nb = static_cast<int>(std::min<int64_t>(kWide, N - n0));
      for (int j = 0; j < kWide; ++j)  // rows past N (the last tile) widen row n0 again, never stored
        for (int64_t k = 0; k < steps; ++k) wb[j * steps + k] = widen(weight_at<TILED>(w, K, n0 + (j < nb ? j : 0), k * kStep));
      // Blocks of 6 rows (6 x 4 accumulators: enough independent sums to hide the dot product's
      // latency), the remainder in one smaller block.
      for (int64_t m0 = 0; m0 < M; m0 += 6) {
        const auto* xm = x + m0 * K;
        auto* ym = y + m0 * N;
        switch (std::min<int64_t>(6, M - m0)) {
          case 1: from_buffer<1>(xm, wb.data(), s, ym, K, N, n0, nb); break;
          case 2: from_buffer<2>(xm, wb.data(), s, ym, K, N, n0, nb); break;
          case 3: from_buffer<3>(xm, wb.data(), s, ym, K, N, n0, nb); break;
          case 4: from_buffer<4>(xm, wb.data(), s, ym, K, N, n0, nb); break;
          case 5: from_buffer<5>(xm, wb.data(), s, ym, K, N, n0, nb); break;
          default: from_buffer<6>(xm, wb.data(), s, ym, K, N, n0, nb); break;
        }
      }
    }
  });
}

#else  // AVX2 + FMA (CPUs without AVX-512: Zen 1-3, most client Intel parts)

// The same structure in float32: each int8 weight widened once to float32 (exact), each bf16
// activation widened by a shift (exact), products summed with FMA in 8 float32 lanes. The sums
// differ from the AVX-512 build's in the last bits (another order, no bf16 products), not from the
// exact result by more than float32 rounding. A row's result still does not depend on its batch:
// registers and buffer give each row the same operations in the same order.
constexpr int kStep = 32;  // the K granularity int8_kernel.STEP promises (4 groups of 8 here)
constexpr int kPrefetch = 256;

inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline __m256 load8(const at::BFloat16* p) {  // 8 bf16 -> float32 (exact)
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }  // rows widened already

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One row (a single stream's decode step): the same sums in the same order as the tiles below, 16
// values of K a step with both halves' weights loaded before their multiply-adds. Measured (2 Zen 3
// cores, a step's multiplications with the output layer, alternated in one process): 8.3-10.1 ->
// 7.5-8.6 ms.
template <int NB, bool TILED, typename X = at::BFloat16>
inline void one_row(const X* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t K,
                    int64_t n0) {
  __m256 acc[NB];
  for (int j = 0; j < NB; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {  // K is a multiple of 32
    const __m256 x0 = load8(x + k), x1 = load8(x + k + 8);
    __m256 w0[NB], w1[NB];
    for (int j = 0; j < NB; ++j) {
      const int8_t* p = weight_at<TILED>(w, K, n0 + j, k);
      if (!TILED && (k & 63) == 0 && k + kPrefetch < K) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
      w0[j] = widen8(p);
      w1[j] = widen8(weight_at<TILED>(w, K, n0 + j, k + 8));
    }
    for (int j = 0; j < NB; ++j) acc[j] = _mm256_fmadd_ps(x0, w0[j], acc[j]);
    for (int j = 0; j < NB; ++j) acc[j] = _mm256_fmadd_ps(x1, w1[j], acc[j]);
  }
  for (int j = 0; j < NB; ++j) y[n0 + j] = static_cast<at::BFloat16>(hsum(acc[j]) * static_cast<float>(s[n0 + j]));
}

// M rows against NB weight rows: M * NB + NB + 1 of the 16 ymm registers.
template <int M, int NB, bool TILED = false, typename X = at::BFloat16>
inline void tile(const X* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y,
                 int64_t K, int64_t N, int64_t n0) {
  if constexpr (M == 1) {
    one_row<NB, TILED, X>(x, w, s, y, K, n0);
    return;
  }
  __m256 acc[M][NB];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    __m256 wv[NB];
    for (int j = 0; j < NB; ++j) {
      const int8_t* p = weight_at<TILED>(w, K, n0 + j, k);
      if (!TILED && (k & 63) == 0 && k + kPrefetch < K) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
      wv[j] = widen8(p);
    }
    for (int m = 0; m < M; ++m) {
      const __m256 xv = load8(x + m * K + k);
      for (int j = 0; j < NB; ++j) acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const float scale = static_cast<float>(s[n0 + j]);
    for (int m = 0; m < M; ++m) y[m * N + n0 + j] = static_cast<at::BFloat16>(hsum(acc[m][j]) * scale);
  }
}

template <int M, int NB>
void rows(const at::BFloat16* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t K, int64_t N) {
  const int64_t tiles = N / NB;
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) tile<M, NB>(x, w, s, y, K, N, t * NB);
  });
  for (int64_t n = tiles * NB; n < N; ++n) tile<M, 1>(x, w, s, y, K, N, n);
}

// Many rows (prompt chunks): the rows are widened to float32 once per call, then a panel of kPanel
// weight rows is widened once into a float32 buffer (L2-sized) and every block of kBlock rows runs
// against each group of kWide of them: 12 sums + 3 weights + 1 row in the 16 registers. The same
// operations in the same order per (row, output) as the tiles above, so the same bits.
// Measured (2 Zen 3 cores, SmolLM2-135M's four layer multiplications x 30, 64 rows): 253 -> 104 ms,
// 52 -> 131 GFLOP/s. Most of it was the accumulators: written out by the runtime count of outputs,
// the compiler kept them in memory and stored all of them at every step (with 16 registers; the
// AVX-512 build keeps them in its 32); the rest is the rows widened once instead of per tile.
constexpr int kWide = 3;
constexpr int kBlock = 4;
constexpr int kRowBlock = 2;  // up to 2 tiled decode rows through tile<> (8 sums + 4 weights + 1 row); more: decode_rows
constexpr int64_t kPanel = 24;

template <int M>
inline void from_buffer(const float* x, const float* wb, const at::BFloat16* s, at::BFloat16* y, int64_t K,
                        int64_t N, int64_t n0, int nb) {
  __m256 acc[M][kWide];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < kWide; ++j) acc[m][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    __m256 wv[kWide];
    for (int j = 0; j < kWide; ++j) wv[j] = _mm256_loadu_ps(wb + j * K + k);
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
      for (int j = 0; j < kWide; ++j) acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
    }
  }
  float out[M][kWide];  // constant indices only, so the sums stay in registers
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < kWide; ++j) out[m][j] = hsum(acc[m][j]);
  for (int j = 0; j < nb; ++j) {
    const float scale = static_cast<float>(s[n0 + j]);
    for (int m = 0; m < M; ++m) y[m * N + n0 + j] = static_cast<at::BFloat16>(out[m][j] * scale);
  }
}

template <bool TILED>
void many_rows(const at::BFloat16* xb, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t M,
               int64_t K, int64_t N) {
  std::vector<float> xf(M * K);
  for (int64_t i = 0; i < M * K; i += 8) _mm256_storeu_ps(xf.data() + i, load8(xb + i));  // K % 32 == 0
  const float* x = xf.data();
  const int64_t panels = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> wb(kPanel * K);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t p0 = p * kPanel;
      const int64_t here = std::min<int64_t>(kPanel, N - p0);
      for (int64_t j = 0; j < kPanel; ++j)  // rows past N widen row p0 again, never stored
        for (int64_t k = 0; k < K; k += 8)
          _mm256_storeu_ps(wb.data() + j * K + k, widen8(weight_at<TILED>(w, K, p0 + (j < here ? j : 0), k)));
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const float* xm = x + m0 * K;
        auto* ym = y + m0 * N;
        for (int64_t t = 0; t < here; t += kWide) {
          const int nb = static_cast<int>(std::min<int64_t>(kWide, here - t));
          const float* wt = wb.data() + t * K;
          switch (std::min<int64_t>(kBlock, M - m0)) {
            case 1: from_buffer<1>(xm, wt, s, ym, K, N, p0 + t, nb); break;
            case 2: from_buffer<2>(xm, wt, s, ym, K, N, p0 + t, nb); break;
            case 3: from_buffer<3>(xm, wt, s, ym, K, N, p0 + t, nb); break;
            default: from_buffer<kBlock>(xm, wt, s, ym, K, N, p0 + t, nb); break;
          }
        }
      }
    }
  });
}


// 3-8 tiled decode rows: the rows widened to float32 once per call, and each group of 4 outputs
// run through tile<> against blocks of up to 4 rows (the compiler keeps 15 of the 16 sums and the 4
// weights in registers). The same sums in the same order as bf16 rows through tile<>, so the same
// bits. Against blocks of 2 rows widened per tile (2 Zen 3 cores, a step's multiplications with the
// output layer, 8 rows, alternated in one process): 24.0 -> 23.1 ms on a quiet host, 38.7 -> 30.9 ms
// on a busy one; 8 streams in process (medians of 3 runs, the builds alternated) 99 -> 103 tokens/s
// on RAG-shaped prompts, 223 -> 243 on short ones.
void decode_rows(const at::BFloat16* xb, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t M,
                 int64_t K, int64_t N) {
  std::vector<float> xf(M * K);
  for (int64_t i = 0; i < M * K; i += 8) _mm256_storeu_ps(xf.data() + i, load8(xb + i));  // K % 32 == 0
  const float* x = xf.data();
  at::parallel_for(0, N / kGroup, 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float* xm = x + m0 * K;
        auto* ym = y + m0 * N;
        switch (std::min<int64_t>(4, M - m0)) {
          case 1: tile<1, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          case 2: tile<2, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          case 3: tile<3, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          default: tile<4, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
        }
      }
  });
}
#endif

// Tiled weights, up to 8 rows: each group of 4 outputs is read from memory once and blocks of
// kRowBlock rows multiply it while it is in L1.
void tiled_rows(const at::BFloat16* x, const int8_t* w, const at::BFloat16* s, at::BFloat16* y, int64_t M,
                int64_t K, int64_t N) {
#if defined(__AVX512BF16__)
  if (M > kRowBlock) {  // 7 or 8 rows: two blocks of 4 and 3-4 rows over each group (it is in L1 for the
                       // second); measured as fast as the row-major kernel's 8 x 3 tiles, where half
                       // groups of 8 rows (each weight widened once) were slower
    at::parallel_for(0, N / kGroup, 16, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
          if (M - m0 == 3)
            tile<3, 4, true>(x + m0 * K, w, s, y + m0 * N, K, N, g * kGroup);
          else
            tile<4, 4, true>(x + m0 * K, w, s, y + m0 * N, K, N, g * kGroup);
        }
    });
    return;
  }
#else
  if (M > kRowBlock) {
    decode_rows(x, w, s, y, M, K, N);
    return;
  }
#endif
  at::parallel_for(0, N / kGroup, 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
        const auto* xm = x + m0 * K;
        auto* ym = y + m0 * N;
        switch (std::min<int64_t>(kRowBlock, M - m0)) {
          case 1: tile<1, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
#if defined(__AVX512BF16__)
          case 2: tile<2, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          case 3: tile<3, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          case 4: tile<4, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          case 5: tile<5, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
          default: tile<6, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
#else
          default: tile<2, kGroup, true>(xm, w, s, ym, K, N, g * kGroup); break;
#endif
        }
      }
  });
}

at::Tensor multiply(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, bool tiled) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && s.dim() == 1, "int8_bf16_mm: x (M, K), w (N, K), s (N)");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kChar && s.scalar_type() == at::kBFloat16,
              "int8_bf16_mm: x bf16, w int8, s bf16");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && s.is_contiguous(), "int8_bf16_mm: contiguous tensors");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K && s.size(0) == N, "int8_bf16_mm: shapes do not match");
  TORCH_CHECK(K % kStep == 0, "int8_bf16_mm: K must be a multiple of 32");
  auto y = at::empty({M, N}, x.options());
  const auto* xp = x.const_data_ptr<at::BFloat16>();
  const auto* wp = w.const_data_ptr<int8_t>();
  const auto* sp = s.const_data_ptr<at::BFloat16>();
  auto* yp = y.mutable_data_ptr<at::BFloat16>();
  if (M == 0 || N == 0) return y;
  if (tiled) {
    TORCH_CHECK(N % kGroup == 0, "int8_bf16_mm_tiled: N must be a multiple of 4 (int8_kernel.tile_rows pads it)");
    if (M > 8)
      many_rows<true>(xp, wp, sp, yp, M, K, N);
    else
      tiled_rows(xp, wp, sp, yp, M, K, N);
    return y;
  }
  if (M > 8) {
    many_rows<false>(xp, wp, sp, yp, M, K, N);
    return y;
  }
  // Up to 8 rows (decode steps) widen in registers; the tile widths keep M * NB accumulators + NB
  // weights + 1 row in the registers (32 zmm with AVX-512, 16 ymm with AVX2).
#if defined(__AVX512BF16__)
  switch (M) {
    case 1: rows<1, 4>(xp, wp, sp, yp, K, N); break;
    case 2: rows<2, 4>(xp, wp, sp, yp, K, N); break;
    case 3: rows<3, 4>(xp, wp, sp, yp, K, N); break;
    case 4: rows<4, 4>(xp, wp, sp, yp, K, N); break;
    case 5: rows<5, 3>(xp, wp, sp, yp, K, N); break;
    case 6: rows<6, 3>(xp, wp, sp, yp, K, N); break;
    case 7: rows<7, 3>(xp, wp, sp, yp, K, N); break;
    default: rows<8, 3>(xp, wp, sp, yp, K, N); break;
  }
#else
  switch (M) {
    case 1: rows<1, 4>(xp, wp, sp, yp, K, N); break;
    case 2: rows<2, 4>(xp, wp, sp, yp, K, N); break;
    case 3: rows<3, 3>(xp, wp, sp, yp, K, N); break;
    case 4: rows<4, 2>(xp, wp, sp, yp, K, N); break;
    case 5: rows<5, 2>(xp, wp, sp, yp, K, N); break;
    case 6: rows<6, 2>(xp, wp, sp, yp, K, N); break;
    case 7: rows<7, 1>(xp, wp, sp, yp, K, N); break;
    default: rows<8, 1>(xp, wp, sp, yp, K, N); break;
  }
#endif
  return y;
}

at::Tensor int8_bf16_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s) { return multiply(x, w, s, false); }

// w in the tiled layout (int8_kernel.tile_rows), N a multiple of 4.
at::Tensor int8_bf16_mm_tiled(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s) {
  return multiply(x, w, s, true);
}

}  // namespace

namespace twin {
// For decode_ops.cpp's whole-step call (the same library).
at::Tensor mm_tiled(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s) { return int8_bf16_mm_tiled(x, w, s); }
}  // namespace twin

TORCH_LIBRARY(twin_int8, m) {
  m.def("int8_bf16_mm(Tensor x, Tensor w, Tensor s) -> Tensor");
  m.def("int8_bf16_mm_tiled(Tensor x, Tensor w, Tensor s) -> Tensor");
}
TORCH_LIBRARY_IMPL(twin_int8, CPU, m) {
  m.impl("int8_bf16_mm", &int8_bf16_mm);
  m.impl("int8_bf16_mm_tiled", &int8_bf16_mm_tiled);
}
