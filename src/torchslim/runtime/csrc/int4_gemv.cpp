// int4 weights x int8 activations on the CPU's integer dot-product instructions, for few rows (decode).
//
// y[m, n] = sum_g ( scale[n, g] * sum_{b in g} sx[m, b] * dot(u[n, b], xq[m, b]) + offset[n, g] * xsum[m, g] )
//
// u: the weight's unsigned 4-bit codes (w = u * scale + offset per group), packed per pair of blocks of 32
// inputs in 32 bytes: byte j holds input j in its low nibble and input j + 32 in its high nibble (one mask gives
// the first block in input order, one shift and mask the second). A last, unpaired block (K / 32 odd) is packed
// in 16 bytes: byte j holds input j low and j + 16 high. The activation is
// quantized per block of 32 inputs in two int8 parts (llama.cpp's Q8_0 keeps only the first): hi = round(x / s)
// with s = max|x| / 127, and lo = round((x - hi * s) / (s / 128)), the rounding residual on a grid 128 times finer
// (|lo| <= 64). The block's integer dot product is dot(u, hi) * 128 + dot(u, lo), so the activation keeps about
// 15 bits for a second integer instruction per block. Measured on SmolLM2 int4 g128 (perplexity on GPL-3 / the
// Python reference with every int4 layer on this kernel, against the same model computed in fp32 throughout:
// 42.45 / 26.24): this kernel 42.46 / 26.26; torch's int4 kernel (bf16 activations) 42.32 / 26.22; one int8 pass
// per 32 inputs (llama.cpp's Q8_0 activations) 44.02 / 26.93, so it is not offered.
// xsum: the exact float sum of the activation over each weight group (the offset term needs no rounding).
// Instruction sets are chosen at run time (AVX512-VNNI on 512-bit registers, two blocks per instruction; else
// AVX512-VNNI on 256-bit registers; else AVX2; else plain C++); every path computes the same integer dot products,
// so they agree up to float summation order. Built with OpenMP: at::parallel_for is an inline OpenMP loop.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t QB = 32;  // inputs per activation block (and per 16 packed weight bytes)

struct Act {  // one activation row, quantized
  const int8_t* qh;     // [K]: the hi codes, in input order
  const int8_t* ql;     // [K]: the lo codes
  const float* sx;      // [K / QB]: each block's lo step (the hi step / 128)
  const float* sxv;     // [K / QB][8]: the same, each repeated over the 8 int32 lanes its block sums into
  const float* xsum;    // [K / G]
};

// -- the dot product of one weight row with up to 8 activation rows ----------------------------------------
using RowFn = void (*)(const uint8_t* w, const float* scale, const float* offset, const Act* acts, int64_t m,
                       int64_t k, int64_t group, float* out, int64_t out_stride);

// input j (0..31) of block b of a row of ``blocks`` blocks, in the layout above
inline int32_t code(const uint8_t* w, int64_t b, int64_t blocks, int j) {
  if (b < blocks / 2 * 2) {
    const uint8_t byte = w[(b / 2) * QB + j];
    return b % 2 ? byte >> 4 : byte & 0x0F;
  }
  const uint8_t byte = w[b * (QB / 2) + j % 16];
  return j < 16 ? byte & 0x0F : byte >> 4;
}

void row_scalar(const uint8_t* w, const float* scale, const float* offset, const Act* acts, int64_t m, int64_t k,
                int64_t group, float* out, int64_t out_stride) {
  const int64_t blocks_per_group = group / QB, groups = k / group;
  for (int64_t r = 0; r < m; ++r) {
    float y = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      float acc = 0.f;
      for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        const int8_t *xh = acts[r].qh + b * QB, *xl = acts[r].ql + b * QB;
        int32_t hi = 0, lo = 0;
        for (int j = 0; j < QB; ++j) {
          const int32_t u = code(w, b, k / QB, j);
          hi += u * xh[j];
          lo += u * xl[j];
        }
        acc += acts[r].sx[b] * float(hi * 128 + lo);
      }
      y += scale[g] * acc + (offset ? offset[g] * acts[r].xsum[g] : 0.f);
    }
    out[r * out_stride] = y;
  }
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// the 32 unsigned codes of block b (of a row of ``blocks``) as bytes in input order
__attribute__((target("avx2,fma"))) inline __m256i unpack32(const uint8_t* w, int64_t b, int64_t blocks) {
  if (b < blocks / 2 * 2) {  // a pair's 32 bytes: the low nibbles are block 2p, the high nibbles block 2p + 1
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (b / 2) * QB));
    return _mm256_and_si256(b % 2 ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(0x0F));
  }
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + b * (QB / 2)));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}

// dot(u, hi) * 128 + dot(u, lo) of one block of 32, in int32 lanes (|sum| <= 15 * 127 * 32 * 129: no overflow)
__attribute__((target("avx2,fma"))) inline __m256i dot32_avx2(__m256i u, const int8_t* xh, const int8_t* xl) {
  // u8 x s8 pairs summed to s16 (15 * 127 * 2 fits: no saturation), then pairs of s16 to s32
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xh));
  const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xl));
  const __m256i dh = _mm256_madd_epi16(_mm256_maddubs_epi16(u, h), ones);
  return _mm256_add_epi32(_mm256_slli_epi32(dh, 7), _mm256_madd_epi16(_mm256_maddubs_epi16(u, l), ones));
}

__attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni"))) inline __m256i dot32_vnni(
    __m256i u, const int8_t* xh, const int8_t* xl) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xh));
  const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xl));
  return _mm256_dpbusd_epi32(_mm256_slli_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, h), 7), u, l);
}

// Four weight rows against one activation row at a time: four independent accumulator chains (an fma's latency
// would otherwise bound each block), and each activation block loaded once for the four. One body, compiled once
// per instruction set (a template cannot carry the target attribute).
#define TORCHSLIM_ROWS4_BODY(DOT)                                                                        \
  const int64_t bpg = group / QB, groups = k / group, row_bytes = k / 2, blocks = k / QB;                \
  for (int64_t r = 0; r < m; ++r) {                                                                      \
    const Act a = acts[r];                                                                               \
    __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;                                          \
    float o0 = 0.f, o1 = 0.f, o2 = 0.f, o3 = 0.f;                                                        \
    for (int64_t g = 0; g < groups; ++g) {                                                               \
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                        \
      for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {                                                \
        const int8_t *xh = a.qh + b * QB, *xl = a.ql + b * QB;                                           \
        const __m256 sx = _mm256_set1_ps(a.sx[b]);                                                       \
        a0 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(w, b, blocks), xh, xl)), a0);           \
        a1 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(w + row_bytes, b, blocks), xh, xl)), a1); \
        a2 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(w + 2 * row_bytes, b, blocks), xh, xl)), a2); \
        a3 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(w + 3 * row_bytes, b, blocks), xh, xl)), a3); \
      }                                                                                                  \
      t0 = _mm256_fmadd_ps(_mm256_set1_ps(scale[g]), a0, t0);                                            \
      t1 = _mm256_fmadd_ps(_mm256_set1_ps(scale[groups + g]), a1, t1);                                   \
      t2 = _mm256_fmadd_ps(_mm256_set1_ps(scale[2 * groups + g]), a2, t2);                               \
      t3 = _mm256_fmadd_ps(_mm256_set1_ps(scale[3 * groups + g]), a3, t3);                               \
      if (offset) {                                                                                      \
        o0 += offset[g] * a.xsum[g];                                                                     \
        o1 += offset[groups + g] * a.xsum[g];                                                            \
        o2 += offset[2 * groups + g] * a.xsum[g];                                                        \
        o3 += offset[3 * groups + g] * a.xsum[g];                                                        \
      }                                                                                                  \
    }                                                                                                    \
    out[r * out_stride] = hsum256(t0) + o0;                                                              \
    out[r * out_stride + 1] = hsum256(t1) + o1;                                                          \
    out[r * out_stride + 2] = hsum256(t2) + o2;                                                          \
    out[r * out_stride + 3] = hsum256(t3) + o3;                                                          \
  }

__attribute__((target("avx2,fma"))) void rows4_avx2(const uint8_t* w, const float* scale, const float* offset,
                                                    const Act* acts, int64_t m, int64_t k, int64_t group,
                                                    float* out, int64_t out_stride) {
  TORCHSLIM_ROWS4_BODY(dot32_avx2)
}

__attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni"))) void rows4_vnni(
    const uint8_t* w, const float* scale, const float* offset, const Act* acts, int64_t m, int64_t k,
    int64_t group, float* out, int64_t out_stride) {
  TORCHSLIM_ROWS4_BODY(dot32_vnni)
}

// Two blocks (64 inputs) of one weight row against one activation row on 512-bit registers: the pair's 32 bytes,
// broadcast to both halves, shifted by 0 (low half) or 4 (high half) and masked, are [block b's 32 codes | block
// b+1's 32 codes] in input order, whose int32 sums land in lanes 0-7 and 8-15, each lane then scaled by its own
// block's step.
#define TORCHSLIM_AVX512 "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"
__attribute__((target(TORCHSLIM_AVX512))) inline __m512 pair64_vnni(const uint8_t* wb, __m512i h, __m512i l,
                                                                     __m512 sx, __m512 acc) {
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  const __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb)));
  const __m512i u = _mm512_and_si512(_mm512_srlv_epi16(raw, shift), _mm512_set1_epi8(0x0F));
  const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, h);
  return _mm512_fmadd_ps(sx, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_slli_epi32(d, 7), u, l)), acc);
}

__attribute__((target(TORCHSLIM_AVX512))) void rows4_vnni512(const uint8_t* w, const float* scale,
                                                              const float* offset, const Act* acts, int64_t m,
                                                              int64_t k, int64_t group, float* out,
                                                              int64_t out_stride) {
  const int64_t bpg = group / QB, groups = k / group, row_bytes = k / 2;
  if (bpg % 2) {  // groups of an odd number of blocks (32, 96 inputs): pairs would straddle two scales
    rows4_vnni(w, scale, offset, acts, m, k, group, out, out_stride);
    return;
  }
  for (int64_t r = 0; r < m; ++r) {
    const Act a = acts[r];
    __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
    float o0 = 0.f, o1 = 0.f, o2 = 0.f, o3 = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t b = g * bpg; b < (g + 1) * bpg; b += 2) {
        const __m512i h = _mm512_loadu_si512(a.qh + b * QB), l = _mm512_loadu_si512(a.ql + b * QB);
        const __m512 sx = _mm512_loadu_ps(a.sxv + b * 8);
        const uint8_t* wb = w + (b / 2) * QB;  // bpg even: b is the first block of a pair
        // the next four rows' bytes at this offset (a hint: past a layer's end it reads nothing): over SmolLM2's
        // 121 int4 layers in sequence, 0.78-0.87x int4pack_mm's time with it against 0.87-1.10x without
        for (int q = 4; q < 8; ++q) _mm_prefetch(reinterpret_cast<const char*>(wb + q * row_bytes), _MM_HINT_T0);
        a0 = pair64_vnni(wb, h, l, sx, a0);
        a1 = pair64_vnni(wb + row_bytes, h, l, sx, a1);
        a2 = pair64_vnni(wb + 2 * row_bytes, h, l, sx, a2);
        a3 = pair64_vnni(wb + 3 * row_bytes, h, l, sx, a3);
      }
      t0 = _mm512_fmadd_ps(_mm512_set1_ps(scale[g]), a0, t0);
      t1 = _mm512_fmadd_ps(_mm512_set1_ps(scale[groups + g]), a1, t1);
      t2 = _mm512_fmadd_ps(_mm512_set1_ps(scale[2 * groups + g]), a2, t2);
      t3 = _mm512_fmadd_ps(_mm512_set1_ps(scale[3 * groups + g]), a3, t3);
      if (offset) {
        o0 += offset[g] * a.xsum[g];
        o1 += offset[groups + g] * a.xsum[g];
        o2 += offset[2 * groups + g] * a.xsum[g];
        o3 += offset[3 * groups + g] * a.xsum[g];
      }
    }
    out[r * out_stride] = _mm512_reduce_add_ps(t0) + o0;
    out[r * out_stride + 1] = _mm512_reduce_add_ps(t1) + o1;
    out[r * out_stride + 2] = _mm512_reduce_add_ps(t2) + o2;
    out[r * out_stride + 3] = _mm512_reduce_add_ps(t3) + o3;
  }
}

// four rows by the plain path (machines without AVX2, and the reference the tests compare with)
void rows4_scalar(const uint8_t* w, const float* scale, const float* offset, const Act* acts, int64_t m, int64_t k,
                  int64_t group, float* out, int64_t out_stride) {
  const int64_t groups = k / group;
  for (int i = 0; i < 4; ++i) {
    row_scalar(w + i * (k / 2), scale + i * groups, offset ? offset + i * groups : nullptr, acts, m, k, group,
               out + i, out_stride);
  }
}

int64_t level_from_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 3;
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

RowFn rows4_fn(int64_t level) {
  static const int64_t best = level_from_cpu();
  const int64_t use = level < 0 ? best : std::min(level, best);
  return use == 3 ? rows4_vnni512 : use == 2 ? rows4_vnni : use == 1 ? rows4_avx2 : rows4_scalar;
}

// -- the op ---------------------------------------------------------------------------------------------------
// One block of 32 activations (zero padded past the layer's inputs) to its 32 hi and 32 lo codes, its lo step and
// its sum. Both versions round half to even (nearbyint in the default rounding mode, and _mm256_round_ps).
using QuantFn = void (*)(const float* v, int8_t* hi, int8_t* lo, float* step, float* sum);

void quantize_block_scalar(const float* v, int8_t* hi, int8_t* lo, float* step, float* sum) {
  float amax = 0.f, total = 0.f;
  for (int j = 0; j < QB; ++j) {
    amax = std::max(amax, std::fabs(v[j]));
    total += v[j];
  }
  const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
  for (int j = 0; j < QB; ++j) {
    const float h = std::nearbyint(v[j] * inv);
    hi[j] = int8_t(h);
    lo[j] = int8_t(std::nearbyint((v[j] - h * d) * inv * 128.f));
  }
  *step = d / 128.f;
  *sum = total;
}

__attribute__((target("avx2,fma"))) inline void store8(int8_t* dst, __m256 rounded) {
  const __m256i i32 = _mm256_cvtps_epi32(rounded);  // already integers: exact
  const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packs_epi16(i16, i16));
}

// The same arithmetic on 8 lanes (the scalar loop calls libm's nearbyint per input: 7 ns an input, measured)
__attribute__((target("avx2,fma"))) void quantize_block_avx2(const float* v, int8_t* hi, int8_t* lo, float* step,
                                                             float* sum) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 x[4], mx = _mm256_setzero_ps(), sm = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm256_loadu_ps(v + 8 * i);
    mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, x[i]));
    sm = _mm256_add_ps(sm, x[i]);
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
  const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
  const __m256 vd = _mm256_set1_ps(d), vinv = _mm256_set1_ps(inv), v128 = _mm256_set1_ps(128.f);
  constexpr int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int i = 0; i < 4; ++i) {
    const __m256 h = _mm256_round_ps(_mm256_mul_ps(x[i], vinv), mode);
    const __m256 r = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(x[i], _mm256_mul_ps(h, vd)), vinv), v128);
    store8(hi + 8 * i, h);
    store8(lo + 8 * i, _mm256_round_ps(r, mode));
  }
  *step = d / 128.f;
  *sum = hsum256(sm);
}

QuantFn quant_fn() {
  static const QuantFn fn = level_from_cpu() >= 1 ? quantize_block_avx2 : quantize_block_scalar;
  return fn;
}

template <typename T>
void quantize_rows(const T* xp, int64_t m, int64_t kin, int64_t k, int64_t group, int8_t* qp, float* sxp,
                   float* sxvp, float* xsp) {
  const int64_t blocks = k / QB, groups = k / group;
  const QuantFn quantize = quant_fn();
  std::fill(xsp, xsp + m * groups, 0.f);
  float v[QB];
  for (int64_t r = 0; r < m; ++r) {
    int8_t* row = qp + r * 2 * k;  // the row's hi codes [K], then its lo codes [K]
    for (int64_t b = 0; b < blocks; ++b) {
      const T* xb = xp + r * kin + b * QB;
      const int64_t real = std::max<int64_t>(0, std::min<int64_t>(QB, kin - b * QB));
      const float* src = v;
      if constexpr (std::is_same_v<T, float>) {
        if (real == QB) src = xb;
      }
      if (src == v) {
        for (int64_t j = 0; j < QB; ++j) v[j] = j < real ? static_cast<float>(xb[j]) : 0.f;
      }
      float sum = 0.f;
      quantize(src, row + b * QB, row + k + b * QB, sxp + r * blocks + b, &sum);
      std::fill(sxvp + (r * blocks + b) * 8, sxvp + (r * blocks + b + 1) * 8, sxp[r * blocks + b]);
      xsp[r * groups + (b * QB) / group] += sum;
    }
  }
}

// ``x`` [M, K_in] (float or bfloat16; K_in <= K: missing inputs are the weight's zero padding) times the packed
// weight [N, K / 2]; the result [M, N] in x's dtype.
at::Tensor int4_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& offset, int64_t group, int64_t level) {
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 2 && scale.dim() == 2, "int4_gemv: 2-D x, packed and scale");
  TORCH_CHECK(packed.scalar_type() == at::kByte && scale.scalar_type() == at::kFloat, "int4_gemv: dtypes");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "int4_gemv: float or bf16 x");
  const int64_t m = x.size(0), kin = x.size(1), n = packed.size(0), k = packed.size(1) * 2;
  TORCH_CHECK(m >= 1 && kin <= k, "int4_gemv: rows, or more inputs than the weight has");
  TORCH_CHECK(group % QB == 0 && k % group == 0, "int4_gemv: groups of a multiple of 32 inputs");
  TORCH_CHECK(scale.size(0) == n && scale.size(1) == k / group, "int4_gemv: scale shape");
  const at::Tensor xc = x.contiguous(), w = packed.contiguous(), s = scale.contiguous();
  at::Tensor o;
  if (offset.has_value() && offset->defined()) {
    o = offset->contiguous();
    TORCH_CHECK(o.scalar_type() == at::kFloat && o.sizes() == s.sizes(), "int4_gemv: offset like scale");
  }
  const int64_t blocks = k / QB, groups = k / group;
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<float> sxbuf, sxvbuf, xsbuf, ybuf;
  qbuf.resize(m * 2 * k);
  sxbuf.resize(m * blocks);
  sxvbuf.resize(m * blocks * 8);
  xsbuf.resize(m * groups);
  int8_t* qp = qbuf.data();
  float *sxp = sxbuf.data(), *sxvp = sxvbuf.data(), *xsp = xsbuf.data();
  if (xc.scalar_type() == at::kFloat) {
    quantize_rows(xc.data_ptr<float>(), m, kin, k, group, qp, sxp, sxvp, xsp);
  } else {
    quantize_rows(xc.data_ptr<at::BFloat16>(), m, kin, k, group, qp, sxp, sxvp, xsp);
  }
  const bool same = xc.scalar_type() == at::kFloat;
  at::Tensor y = at::empty({m, n}, x.options());
  if (!same) ybuf.resize(m * n);
  float* yp = same ? y.data_ptr<float>() : ybuf.data();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float *spp = s.data_ptr<float>(), *opp = o.defined() ? o.data_ptr<float>() : nullptr;
  const RowFn fn4 = rows4_fn(level);
  const int64_t quads = n / 4;
  for (int64_t r0 = 0; r0 < m; r0 += 8) {  // eight activation rows at a time (rows are independent)
    const int64_t mm = std::min<int64_t>(8, m - r0);
    Act acts[8];
    for (int64_t r = 0; r < mm; ++r) {
      const int8_t* q = qp + (r0 + r) * 2 * k;
      acts[r] = Act{q, q + k, sxp + (r0 + r) * blocks, sxvp + (r0 + r) * blocks * 8, xsp + (r0 + r) * groups};
    }
    float* yr = yp + r0 * n;
    at::parallel_for(0, quads, 4, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin * 4; i < end * 4; i += 4) {
        fn4(wp + i * (k / 2), spp + i * groups, opp ? opp + i * groups : nullptr, acts, mm, k, group, yr + i, n);
      }
    });
    for (int64_t i = quads * 4; i < n; ++i) {  // the last rows of a layer whose outputs are not a multiple of 4
      row_scalar(wp + i * (k / 2), spp + i * groups, opp ? opp + i * groups : nullptr, acts, mm, k, group, yr + i,
                 n);
    }
  }
  if (!same) {
    at::BFloat16* out = y.data_ptr<at::BFloat16>();
    for (int64_t i = 0; i < m * n; ++i) out[i] = at::BFloat16(yp[i]);
  }
  return y;
}

int64_t int4_gemv_level() { return level_from_cpu(); }

}  // namespace

TORCH_LIBRARY(torchslim_cpu, lib) {
  lib.def("int4_gemv(Tensor x, Tensor packed, Tensor scale, Tensor? offset, int group, int level) -> Tensor");
  lib.def("int4_gemv_level() -> int", &int4_gemv_level);
}

TORCH_LIBRARY_IMPL(torchslim_cpu, CPU, lib) { lib.impl("int4_gemv", &int4_gemv); }
