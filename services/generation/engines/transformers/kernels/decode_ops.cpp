// The small operations of a decode step between the int8 matrix multiplications, each one call
// instead of a dozen: RMSNorm (with the residual add before it), SiLU-and-multiply, and rotary
// embedding + the cache write + attention over the cache for every decode row.
//
// Why (profiled on 2 cores, SmolLM2-135M, one row at ~300 tokens of context): the multiplications
// took 10.2 ms of a 17.7 ms step; the rest went to ~1,500 torch operator calls (casts, slices, the
// rotation's cat, index writes, batched matmuls of one query), a few microseconds of dispatch each.
// Rounding follows the torch code it replaces (lean_llama.py): bf16 values are rounded where torch
// rounds them (each bf16 product and sum), norms and attention are computed in float32, so greedy
// tokens match that path's up to float32 summation order.
// Built with int8_bf16_mm.cpp into one library (int8_kernel.py), for AVX-512 or for AVX2 + FMA (the
// vector helpers below have both); threads from torch's OpenMP pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <vector>
#include <torch/library.h>

namespace twin {
at::Tensor mm_tiled(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s);  // int8_bf16_mm.cpp
}

namespace {

using bf16 = at::BFloat16;

inline float r(float v) { return static_cast<float>(static_cast<bf16>(v)); }  // rounded as torch's bf16 ops round

#if defined(__AVX512F__)
// exp of 16 floats (Cephes' polynomial on x - n ln2, scaled by 2^n; within 2 ulp of expf): a scalar
// std::exp per attention score and per SiLU was most of a batch's attention time.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-103.972077083991796f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(f, f), _mm512_add_ps(f, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// exp of n floats in place, minus ``shift`` first; -> their sum.
inline float exp_sum(float* v, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 total = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(v + i), s));
    _mm512_storeu_ps(v + i, e);
    total = _mm512_add_ps(total, e);
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, v + i), s));
    _mm512_mask_storeu_ps(v + i, m, e);
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(total);
}

#else  // AVX2 + FMA: the same polynomial on 8 lanes, and the tail through a padded buffer

inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-103.972077083991796f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  f = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), f);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(f, f), _mm256_add_ps(f, _mm256_set1_ps(1.f)));
  // p * 2^n as two powers of two (n reaches -150: one exponent field alone would underflow).
  const __m256i e = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(e, 1);
  const auto pow2 = [](__m256i k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
  };
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(half)), pow2(_mm256_sub_epi32(e, half)));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp of n floats in place, minus ``shift`` first; -> their sum.
inline float exp_sum(float* v, int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 total = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), s));
    _mm256_storeu_ps(v + i, e);
    total = _mm256_add_ps(total, e);
  }
  float sum = hsum8(total);
  if (i < n) {
    alignas(32) float tail[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t t = i; t < n; ++t) tail[t - i] = v[t];
    _mm256_store_ps(tail, exp8(_mm256_sub_ps(_mm256_load_ps(tail), s)));
    for (int64_t t = i; t < n; ++t) {
      v[t] = tail[t - i];
      sum += tail[t - i];
    }
  }
  return sum;
}

#endif

constexpr int64_t kMaxBlocks = 16;  // head_dim up to 256, one float32 register per 16

// Llama's rotation of one head (rotate_half): bf16(bf16(x * cos) + bf16(rotated * sin)).
inline void rope(const bf16* x, const bf16* cos, const bf16* sin, float* out, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) {
    const float rotated = i < half ? -static_cast<float>(x[i + half]) : static_cast<float>(x[i - half]);
    out[i] = r(r(static_cast<float>(x[i]) * static_cast<float>(cos[i])) + r(rotated * static_cast<float>(sin[i])));
  }
}

// 16 float32 lanes: one zmm with AVX-512, two ymm with AVX2 (head_dim is a multiple of 16).
#if defined(__AVX512F__)
using F16 = __m512;
inline F16 zero16() { return _mm512_setzero_ps(); }
inline F16 splat16(float v) { return _mm512_set1_ps(v); }
inline F16 fmadd16(F16 a, F16 b, F16 c) { return _mm512_fmadd_ps(a, b, c); }
inline F16 loadf16(const float* p) { return _mm512_loadu_ps(p); }
inline float sum16(F16 a) { return _mm512_reduce_add_ps(a); }
inline void store16(float* p, F16 a) { _mm512_storeu_ps(p, a); }
inline F16 load16(const bf16* p) {  // 16 bf16 -> float32 (exact)
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
#else
struct F16 {
  __m256 lo, hi;
};
inline F16 zero16() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline F16 splat16(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
inline F16 fmadd16(F16 a, F16 b, F16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline F16 loadf16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline float sum16(F16 a) { return hsum8(_mm256_add_ps(a.lo, a.hi)); }
inline void store16(float* p, F16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline __m256 load8(const bf16* p) {  // 8 bf16 -> float32 (exact)
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline F16 load16(const bf16* p) { return {load8(p), load8(p + 8)}; }
#endif

inline float dot(const float* a, const bf16* b, int64_t d) {
  F16 acc = zero16();
  for (int64_t i = 0; i < d; i += 16) acc = fmadd16(loadf16(a + i), load16(b + i), acc);
  return sum16(acc);
}

// Rounding to bf16 in 16 lanes exactly as c10::BFloat16(float) rounds (to nearest even; NaN ->
// 0x7FC0): the integer form, so both builds give the scalar code's bits.
#if defined(__AVX512F__)
inline F16 exp16f(F16 x) { return exp16(x); }
inline F16 add16(F16 a, F16 b) { return _mm512_add_ps(a, b); }
inline F16 mul16(F16 a, F16 b) { return _mm512_mul_ps(a, b); }
inline F16 div16(F16 a, F16 b) { return _mm512_div_ps(a, b); }
inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)),
                                        _mm512_set1_epi32(0x7FFF));
  const __m512i out = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  return _mm512_mask_mov_epi32(out, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}
inline F16 round16(F16 v) { return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16)); }
inline void store_bf16(bf16* p, F16 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
}
#else
inline F16 exp16f(F16 x) { return {exp8(x.lo), exp8(x.hi)}; }
inline F16 add16(F16 a, F16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline F16 mul16(F16 a, F16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline F16 div16(F16 a, F16 b) { return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
inline __m256i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)),
                                        _mm256_set1_epi32(0x7FFF));
  const __m256i out = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  return _mm256_blendv_epi8(out, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}
inline F16 round16(F16 v) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v.lo), 16)),
          _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v.hi), 16))};
}
inline void store_bf16(bf16* p, F16 v) {  // packus interleaves the 128-bit halves: put them back in order
  const __m256i packed = _mm256_packus_epi32(bf16_bits(v.lo), bf16_bits(v.hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permute4x64_epi64(packed, 0xD8));
}
#endif

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kBFloat16 && t.is_contiguous(),
              name, ": a contiguous bf16 (rows, features) tensor");
}

// Rows of the small operations per thread: a decode step's few rows stay on the calling thread
// (a parallel region costs more than they do); a prefill chunk's 64+ rows are shared.
inline int64_t row_grain(int64_t features) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(features, 1)); }

// weight * bf16(x * rsqrt(mean(x^2) + eps)), x read as float32: lean_llama._rms. 16 lanes at a
// time (a scalar loop of bf16 conversions took 120 us for a 72-row chunk step's norm, 30 a step).
void rms_row(const bf16* x, const bf16* w, bf16* out, int64_t n, double eps) {
  F16 acc = zero16();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const F16 v = load16(x + i);
    acc = fmadd16(v, v, acc);
  }
  float sum = sum16(acc);
  for (int64_t t = i; t < n; ++t) {
    const float v = static_cast<float>(x[t]);
    sum += v * v;
  }
  const float scale = 1.f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
  const F16 s = splat16(scale);
  for (i = 0; i + 16 <= n; i += 16) store_bf16(out + i, mul16(load16(w + i), round16(mul16(load16(x + i), s))));
  for (; i < n; ++i)
    out[i] = static_cast<bf16>(static_cast<float>(w[i]) * r(static_cast<float>(x[i]) * scale));
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_rows(x, "rms_norm");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1) && w.scalar_type() == at::kBFloat16 && w.is_contiguous(),
              "rms_norm: a bf16 weight per feature");
  auto out = at::empty_like(x);
  const int64_t n = x.size(1);
  const bf16* xp = x.const_data_ptr<bf16>();
  const bf16* wp = w.const_data_ptr<bf16>();
  bf16* op = out.mutable_data_ptr<bf16>();
  at::parallel_for(0, x.size(0), row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) rms_row(xp + row * n, wp, op + row * n, n, eps);
  });
  return out;
}

// x += delta (in bf16, in place: the residual stream), then rms_norm(x, w).
at::Tensor add_rms_(at::Tensor x, const at::Tensor& delta, const at::Tensor& w, double eps) {
  check_rows(x, "add_rms_");
  check_rows(delta, "add_rms_ delta");
  TORCH_CHECK(delta.sizes() == x.sizes(), "add_rms_: delta shaped like x");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1) && w.scalar_type() == at::kBFloat16 && w.is_contiguous(),
              "add_rms_: a bf16 weight per feature");
  auto out = at::empty_like(x);
  const int64_t n = x.size(1);
  bf16* xp = x.mutable_data_ptr<bf16>();
  const bf16* dp = delta.const_data_ptr<bf16>();
  const bf16* wp = w.const_data_ptr<bf16>();
  bf16* op = out.mutable_data_ptr<bf16>();
  at::parallel_for(0, x.size(0), row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      bf16* xr = xp + row * n;
      const bf16* dr = dp + row * n;
      int64_t i = 0;
      for (; i + 16 <= n; i += 16) store_bf16(xr + i, add16(load16(xr + i), load16(dr + i)));
      for (; i < n; ++i) xr[i] = static_cast<bf16>(static_cast<float>(xr[i]) + static_cast<float>(dr[i]));
      rms_row(xr, wp, op + row * n, n, eps);
    }
  });
  return out;
}

// (rows, 2I) gate|up -> (rows, I): bf16(silu(gate)) * up, each rounded as torch rounds it.
at::Tensor silu_mul(const at::Tensor& gate_up) {
  check_rows(gate_up, "silu_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_mul: gate and up halves");
  const int64_t rows = gate_up.size(0), inter = gate_up.size(1) / 2;
  auto out = at::empty({rows, inter}, gate_up.options());
  const auto* g = gate_up.const_data_ptr<bf16>();
  auto* o = out.mutable_data_ptr<bf16>();
  at::parallel_for(0, rows, row_grain(2 * inter), [&](int64_t begin, int64_t end) {
    float gate[16];  // the tail's exp(-gate) (fewer than 16 features)
    for (int64_t row = begin; row < end; ++row) {
      const bf16* in = g + row * 2 * inter;
      bf16* dst = o + row * inter;
      int64_t i = 0;
      for (; i + 16 <= inter; i += 16) {
        const F16 x = load16(in + i);
        const F16 silu = round16(div16(x, add16(splat16(1.f), exp16f(mul16(x, splat16(-1.f))))));
        store_bf16(dst + i, mul16(silu, load16(in + inter + i)));
      }
      if (i == inter) continue;
      const int64_t tail = inter - i;  // the same exp as the lanes above, through exp_sum's tail
      for (int64_t t = 0; t < tail; ++t) gate[t] = -static_cast<float>(in[i + t]);
      exp_sum(gate, tail, 0.f);
      for (int64_t t = 0; t < tail; ++t) {
        const float x = static_cast<float>(in[i + t]);
        dst[i + t] = static_cast<bf16>(r(x / (1.f + gate[t])) * static_cast<float>(in[inter + i + t]));
      }
    }
  });
  return out;
}

// The G query heads that share one key/value head of one row: each cached key and value is widened
// once for all G (the per-head loop below widens them G times; a step of 8 rows spent a fifth of its
// time in attention), and each head gets the same operations in the same order as in that loop, so
// the same bits.
template <int BLOCKS, int G>
void attend_group(const bf16* qrow, const bf16* cos, const bf16* sin, const bf16* keys, const bf16* values,
                  int64_t n, float scale, bf16* out, std::vector<float>& scores) {
  constexpr int64_t d = BLOCKS * 16;
  float q[G][d];
  for (int gh = 0; gh < G; ++gh) rope(qrow + gh * d, cos, sin, q[gh], d);
  scores.resize(G * n);
  float top[G], total[G];
  for (int gh = 0; gh < G; ++gh) top[gh] = -INFINITY;
  for (int64_t t = 0; t < n; ++t) {
    F16 k[BLOCKS];
    for (int j = 0; j < BLOCKS; ++j) k[j] = load16(keys + t * d + j * 16);
    for (int gh = 0; gh < G; ++gh) {
      F16 acc = zero16();
      for (int j = 0; j < BLOCKS; ++j) acc = fmadd16(loadf16(q[gh] + j * 16), k[j], acc);
      const float score = sum16(acc) * scale;
      scores[gh * n + t] = score;
      top[gh] = std::max(top[gh], score);
    }
  }
  for (int gh = 0; gh < G; ++gh) total[gh] = exp_sum(scores.data() + gh * n, n, top[gh]);
  F16 acc[G][BLOCKS];
  for (int gh = 0; gh < G; ++gh)
    for (int j = 0; j < BLOCKS; ++j) acc[gh][j] = zero16();
  for (int64_t t = 0; t < n; ++t) {
    F16 v[BLOCKS];
    for (int j = 0; j < BLOCKS; ++j) v[j] = load16(values + t * d + j * 16);
    for (int gh = 0; gh < G; ++gh) {
      const F16 p = splat16(scores[gh * n + t] / total[gh]);
      for (int j = 0; j < BLOCKS; ++j) acc[gh][j] = fmadd16(p, v[j], acc[gh][j]);
    }
  }
  for (int gh = 0; gh < G; ++gh)
    for (int j = 0; j < BLOCKS; ++j) {
      float lane[16];
      store16(lane, acc[gh][j]);
      for (int i = 0; i < 16; ++i) out[gh * d + j * 16 + i] = static_cast<bf16>(lane[i]);
    }
}

using AttendGroup = void (*)(const bf16*, const bf16*, const bf16*, const bf16*, const bf16*, int64_t, float, bf16*,
                             std::vector<float>&);

// The shapes with a grouped kernel (head_dim 64 or 128; 2-4 query heads a key/value head, their sums
// in registers), else nullptr: the per-head loop.
AttendGroup group_kernel(int64_t blocks, int64_t group) {
  if (blocks == 4 && group == 2) return attend_group<4, 2>;
  if (blocks == 4 && group == 3) return attend_group<4, 3>;
  if (blocks == 4 && group == 4) return attend_group<4, 4>;
  if (blocks == 8 && group == 2) return attend_group<8, 2>;
  return nullptr;
}

// Every decode row b at position lengths[b]: its key and value (rotated key) written into the
// layer's cache (2, rows, kv_heads, capacity, head_dim) bf16 (they are bf16 values: exact), then each
// query head attends over
// positions 0..lengths[b] of its key/value head. qkv: (B, (heads + 2 kv_heads) * head_dim) bf16;
// cos, sin: (B, head_dim) bf16 -> (B, heads * head_dim) bf16.
at::Tensor decode_attention(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor cache,
                            const at::Tensor& lengths, int64_t heads, int64_t kv_heads) {
  check_rows(qkv, "decode_attention qkv");
  check_rows(cos, "decode_attention cos");
  check_rows(sin, "decode_attention sin");
  TORCH_CHECK(cache.dim() == 5 && cache.size(0) == 2 && cache.scalar_type() == at::kBFloat16 && cache.is_contiguous(),
              "decode_attention: a contiguous bf16 cache (2, rows, kv_heads, capacity, head_dim)");
  TORCH_CHECK(lengths.dim() == 1 && lengths.scalar_type() == at::kLong && lengths.is_contiguous(),
              "decode_attention: int64 lengths");
  const int64_t B = qkv.size(0), rows = cache.size(1), capacity = cache.size(3), d = cache.size(4);
  TORCH_CHECK(cache.size(2) == kv_heads && kv_heads > 0 && heads % kv_heads == 0, "decode_attention: head counts");
  TORCH_CHECK(d % 16 == 0 && d / 16 <= kMaxBlocks && qkv.size(1) == (heads + 2 * kv_heads) * d,
              "decode_attention: head_dim a multiple of 16 up to 256");
  TORCH_CHECK(B <= rows && lengths.size(0) == B && cos.size(0) == B && sin.size(0) == B && cos.size(1) == d &&
                  sin.size(1) == d, "decode_attention: one length, cos and sin per row");
  const auto* len = lengths.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(len[b] >= 0 && len[b] < capacity, "decode_attention: position ", len[b], " outside the cache");
  auto out = at::empty({B, heads * d}, qkv.options());
  const int64_t group = heads / kv_heads, width = qkv.size(1);
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const auto* qp = qkv.const_data_ptr<bf16>();
  const auto* cp = cos.const_data_ptr<bf16>();
  const auto* sp = sin.const_data_ptr<bf16>();
  bf16* kv = cache.mutable_data_ptr<bf16>();
  bf16* op = out.mutable_data_ptr<bf16>();
  // The new keys and values first (cheap), then one task per (row, query head): 9 heads of one row
  // share 2 threads better than its 3 key/value heads would.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < kv_heads; ++g) {
      const bf16* row = qp + b * width;
      float key[kMaxBlocks * 16];
      rope(row + (heads + g) * d, cp + b * d, sp + b * d, key, d);
      bf16* cached = kv + (((0 * rows + b) * kv_heads + g) * capacity + len[b]) * d;
      for (int64_t i = 0; i < d; ++i) cached[i] = static_cast<bf16>(key[i]);  // rounded already: exact
      bf16* value = kv + (((1 * rows + b) * kv_heads + g) * capacity + len[b]) * d;
      for (int64_t i = 0; i < d; ++i) value[i] = row[(heads + kv_heads + g) * d + i];
    }
  const int64_t blocks = d / 16;
  // A task per (row, key/value head) where there are enough of them to share the threads evenly
  // (one row's 3 would leave a thread idle a third of the time), else a task per (row, query head).
  const AttendGroup grouped = B * kv_heads >= 3 * at::get_num_threads() ? group_kernel(blocks, group) : nullptr;
  if (grouped != nullptr) {
    at::parallel_for(0, B * kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / kv_heads, g = task % kv_heads;
        grouped(qp + b * width + g * group * d, cp + b * d, sp + b * d,
                kv + ((0 * rows + b) * kv_heads + g) * capacity * d, kv + ((1 * rows + b) * kv_heads + g) * capacity * d,
                len[b] + 1, scale, op + b * heads * d + g * group * d, scores);
      }
    });
    return out;
  }
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(d), scores;
    F16 acc[kMaxBlocks];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads, g = h / group, n = len[b] + 1;
      const bf16* keys = kv + ((0 * rows + b) * kv_heads + g) * capacity * d;
      const bf16* values = kv + ((1 * rows + b) * kv_heads + g) * capacity * d;
      rope(qp + b * width + h * d, cp + b * d, sp + b * d, q.data(), d);
      scores.resize(n);
      float top = -INFINITY;
      for (int64_t t = 0; t < n; ++t) {
        scores[t] = dot(q.data(), keys + t * d, d) * scale;
        top = std::max(top, scores[t]);
      }
      const float total = exp_sum(scores.data(), n, top);
      for (int64_t j = 0; j < blocks; ++j) acc[j] = zero16();
      for (int64_t t = 0; t < n; ++t) {
        const F16 p = splat16(scores[t] / total);
        for (int64_t j = 0; j < blocks; ++j) acc[j] = fmadd16(p, load16(values + t * d + j * 16), acc[j]);
      }
      bf16* o = op + b * heads * d + h * d;
      for (int64_t j = 0; j < blocks; ++j) {
        float lane[16];
        store16(lane, acc[j]);
        for (int i = 0; i < 16; ++i) o[j * 16 + i] = static_cast<bf16>(lane[i]);
      }
    }
  });
  return out;
}

// The decode rows through every layer in one call (lean_llama.LeanLlama._decode without adapters):
// the same operations in the same order as the per-operation calls from Python, so the same bits,
// without ~250 calls a step through Python and the dispatcher (the partner thread spins at the next
// fork meanwhile). x: the residual stream (B, hidden), added to in place; weights in the int8
// kernel's tiled layout; -> the final-normed hidden states.
at::Tensor decode_layers(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor kv,
                         const at::Tensor& lengths, int64_t heads, int64_t kv_heads, double eps,
                         at::TensorList in_norms, at::TensorList post_norms, at::TensorList qkv_w,
                         at::TensorList qkv_s, at::TensorList o_w, at::TensorList o_s, at::TensorList gate_up_w,
                         at::TensorList gate_up_s, at::TensorList down_w, at::TensorList down_s,
                         const at::Tensor& final_norm) {
  const int64_t layers = static_cast<int64_t>(in_norms.size());
  for (auto list : {post_norms, qkv_w, qkv_s, o_w, o_s, gate_up_w, gate_up_s, down_w, down_s})
    TORCH_CHECK(static_cast<int64_t>(list.size()) == layers, "decode_layers: one weight of each kind per layer");
  TORCH_CHECK(layers > 0 && kv.dim() == 6 && kv.size(0) == layers && kv.is_contiguous(),
              "decode_layers: a contiguous cache (layers, 2, rows, kv_heads, capacity, head_dim)");
  at::Tensor h = rms_norm(x, in_norms[0], eps);
  for (int64_t i = 0; i < layers; ++i) {
    const at::Tensor attn = decode_attention(twin::mm_tiled(h, qkv_w[i], qkv_s[i]), cos, sin, kv.select(0, i), lengths,
                                             heads, kv_heads);
    h = add_rms_(x, twin::mm_tiled(attn, o_w[i], o_s[i]), post_norms[i], eps);
    const at::Tensor act = silu_mul(twin::mm_tiled(h, gate_up_w[i], gate_up_s[i]));
    h = add_rms_(x, twin::mm_tiled(act, down_w[i], down_s[i]), i + 1 < layers ? in_norms[i + 1] : final_norm, eps);
  }
  return h;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(twin_int8, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("add_rms_(Tensor(a!) x, Tensor delta, Tensor w, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("decode_attention(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) cache, Tensor lengths, int heads, "
        "int kv_heads) -> Tensor");
  m.def("decode_layers(Tensor(a!) x, Tensor cos, Tensor sin, Tensor(b!) kv, Tensor lengths, int heads, int kv_heads, "
        "float eps, Tensor[] in_norms, Tensor[] post_norms, Tensor[] qkv_w, Tensor[] qkv_s, Tensor[] o_w, "
        "Tensor[] o_s, Tensor[] gate_up_w, Tensor[] gate_up_s, Tensor[] down_w, Tensor[] down_s, "
        "Tensor final_norm) -> Tensor");
}

TORCH_LIBRARY_IMPL(twin_int8, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_", &add_rms_);
  m.impl("silu_mul", &silu_mul);
  m.impl("decode_attention", &decode_attention);
  m.impl("decode_layers", &decode_layers);
}
