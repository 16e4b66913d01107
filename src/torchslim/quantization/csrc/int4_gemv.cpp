// int4 weights x int8 activations on the CPU's integer dot-product instructions, for few rows (decode).
//
// y[m, n] = sum_g ( scale[n, g] * sum_{b in g} sx[m, b] * dot(u[n, b], xq[m, b]) + offset[n, g] * xsum[m, g] )
//
// u: the weight's unsigned 4-bit codes (w = u * scale + offset per group), packed per block of 32 inputs in
// 16 bytes: byte j holds input j in its low nibble and input j + 16 in its high nibble. The activation is
// quantized per block of 32 inputs in two int8 parts (llama.cpp's Q8_0 keeps only the first): hi = round(x / s)
// with s = max|x| / 127, and lo = round((x - hi * s) / (s / 128)), the rounding residual on a grid 128 times finer
// (|lo| <= 64). The block's integer dot product is dot(u, hi) * 128 + dot(u, lo), so the activation keeps about
// 15 bits for a second integer instruction per block. Measured on SmolLM2 int4 g128 (perplexity on GPL-3 / the
// Python reference with every int4 layer on this kernel, against the same model computed in fp32 throughout:
// 42.45 / 26.24): this kernel 42.46 / 26.26; torch's int4 kernel (bf16 activations) 42.32 / 26.22; one int8 pass
// per 32 inputs (llama.cpp's Q8_0 activations) 44.02 / 26.93, so it is not offered.
// xsum: the exact float sum of the activation over each weight group (the offset term needs no rounding).
// Instruction sets are chosen at run time (AVX512-VNNI, else AVX2, else plain C++); every path computes the
// same integer dot products, so they agree up to float summation order.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t QB = 32;  // inputs per activation block (and per 16 packed weight bytes)

struct Act {  // one activation row, quantized
  const int8_t* q;      // [K / QB][2][QB]: each block of 32's hi codes, then its lo codes
  const float* sx;      // [K / QB]: each block's lo step (the hi step / 128)
  const float* xsum;    // [K / G]
};

// -- the dot product of one weight row with up to 8 activation rows ----------------------------------------
using RowFn = void (*)(const uint8_t* w, const float* scale, const float* offset, const Act* acts, int64_t m,
                       int64_t k, int64_t group, float* out, int64_t out_stride);

void row_scalar(const uint8_t* w, const float* scale, const float* offset, const Act* acts, int64_t m, int64_t k,
                int64_t group, float* out, int64_t out_stride) {
  const int64_t blocks_per_group = group / QB, groups = k / group;
  for (int64_t r = 0; r < m; ++r) {
    float y = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      float acc = 0.f;
      for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        const uint8_t* wb = w + b * (QB / 2);
        const int8_t* xb = acts[r].q + b * 2 * QB;
        int32_t hi = 0, lo = 0;
        for (int j = 0; j < 16; ++j) {
          hi += int32_t(wb[j] & 0x0F) * xb[j] + int32_t(wb[j] >> 4) * xb[j + 16];
          lo += int32_t(wb[j] & 0x0F) * xb[QB + j] + int32_t(wb[j] >> 4) * xb[QB + j + 16];
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

// 32 unsigned codes of one block as bytes in input order (low nibbles, then high nibbles)
__attribute__((target("avx2,fma"))) inline __m256i unpack32(const uint8_t* wb) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(raw, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
  return _mm256_set_m128i(hi, lo);
}

// dot(u, hi) * 128 + dot(u, lo) of one block of 32, in int32 lanes (|sum| <= 15 * 127 * 32 * 129: no overflow)
__attribute__((target("avx2,fma"))) inline __m256i dot32_avx2(__m256i u, const int8_t* xb) {
  // u8 x s8 pairs summed to s16 (15 * 127 * 2 fits: no saturation), then pairs of s16 to s32
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
  const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + QB));
  const __m256i dh = _mm256_madd_epi16(_mm256_maddubs_epi16(u, h), ones);
  return _mm256_add_epi32(_mm256_slli_epi32(dh, 7), _mm256_madd_epi16(_mm256_maddubs_epi16(u, l), ones));
}

__attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni"))) inline __m256i dot32_vnni(__m256i u,
                                                                                         const int8_t* xb) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
  const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + QB));
  return _mm256_dpbusd_epi32(_mm256_slli_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, h), 7), u, l);
}

// Four weight rows against one activation row at a time: four independent accumulator chains (an fma's latency
// would otherwise bound each block), and each activation block loaded once for the four. One body, compiled once
// per instruction set (a template cannot carry the target attribute).
#define TORCHSLIM_ROWS4_BODY(DOT)                                                                        \
  const int64_t bpg = group / QB, groups = k / group, row_bytes = k / 2;                                 \
  for (int64_t r = 0; r < m; ++r) {                                                                      \
    const Act a = acts[r];                                                                               \
    __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;                                          \
    float o0 = 0.f, o1 = 0.f, o2 = 0.f, o3 = 0.f;                                                        \
    for (int64_t g = 0; g < groups; ++g) {                                                               \
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                        \
      for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {                                                \
        const int8_t* x = a.q + b * 2 * QB;                                                              \
        const __m256 sx = _mm256_set1_ps(a.sx[b]);                                                       \
        const uint8_t* wb = w + b * (QB / 2);                                                            \
        a0 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(wb), x)), a0);                          \
        a1 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(wb + row_bytes), x)), a1);              \
        a2 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(wb + 2 * row_bytes), x)), a2);          \
        a3 = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(DOT(unpack32(wb + 3 * row_bytes), x)), a3);          \
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
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

RowFn rows4_fn(int64_t level) {
  static const int64_t best = level_from_cpu();
  const int64_t use = level < 0 ? best : std::min(level, best);
  return use == 2 ? rows4_vnni : use == 1 ? rows4_avx2 : rows4_scalar;
}

// -- the op ---------------------------------------------------------------------------------------------------
// One block of 32 activations (``kin`` of them real, the rest zero padding) to its 32 hi then 32 lo codes, its lo
// step and its sum.
template <typename T>
void quantize_block(const T* xb, int64_t kin, int8_t* codes, float* step, float* sum) {
  float v[QB];
  float amax = 0.f, total = 0.f;
  for (int j = 0; j < QB; ++j) {
    v[j] = j < kin ? static_cast<float>(xb[j]) : 0.f;
    amax = std::max(amax, std::fabs(v[j]));
    total += v[j];
  }
  const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
  for (int j = 0; j < QB; ++j) {
    const float h = std::nearbyint(v[j] * inv);
    codes[j] = int8_t(h);
    codes[QB + j] = int8_t(std::nearbyint((v[j] - h * d) * inv * 128.f));
  }
  *step = d / 128.f;
  *sum = total;
}

template <typename T>
void quantize_rows(const T* xp, int64_t m, int64_t kin, int64_t k, int64_t group, int8_t* qp, float* sxp,
                   float* xsp) {
  const int64_t blocks = k / QB, groups = k / group;
  std::fill(xsp, xsp + m * groups, 0.f);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      float sum = 0.f;
      quantize_block(xp + r * kin + b * QB, std::max<int64_t>(0, std::min<int64_t>(QB, kin - b * QB)),
                     qp + r * 2 * k + b * 2 * QB, sxp + r * blocks + b, &sum);
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
  thread_local std::vector<float> sxbuf, xsbuf, ybuf;
  qbuf.resize(m * 2 * k);
  sxbuf.resize(m * blocks);
  xsbuf.resize(m * groups);
  int8_t* qp = qbuf.data();
  float *sxp = sxbuf.data(), *xsp = xsbuf.data();
  if (xc.scalar_type() == at::kFloat) {
    quantize_rows(xc.data_ptr<float>(), m, kin, k, group, qp, sxp, xsp);
  } else {
    quantize_rows(xc.data_ptr<at::BFloat16>(), m, kin, k, group, qp, sxp, xsp);
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
      acts[r] = Act{qp + (r0 + r) * 2 * k, sxp + (r0 + r) * blocks, xsp + (r0 + r) * groups};
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
