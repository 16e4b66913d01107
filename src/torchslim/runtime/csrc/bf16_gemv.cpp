// bf16 weights x bf16 activations for few rows (decode): y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), products
// and sums in float32 as a bf16 matmul accumulates, the result rounded to bf16 once.
//
// oneDNN's bf16 matmul at one row reads SmolLM2's weights far below the memory bandwidth (measured: the bf16 decode
// step at 66% of llama.cpp's F16 one). This kernel streams each weight row once per call: AVX512-BF16 ``vdpbf16ps``
// takes 32 pairs per instruction where the CPU has it; elsewhere bf16 is widened to float by a 16-bit shift (AVX512F
// or AVX2) and multiplied by fused multiply-adds; plain C++ otherwise. Four weight rows at a time, each activation
// block loaded once for the four, rows split over threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

using RowsFn = void (*)(const uint16_t* w, const uint16_t* x, int64_t k, float* out);  // 4 weight rows, 1 x row

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float dot_scalar(const uint16_t* w, const uint16_t* x, int64_t k) {
  float acc = 0.f;
  for (int64_t j = 0; j < k; ++j) acc += bf16_to_float(w[j]) * bf16_to_float(x[j]);
  return acc;
}

void rows4_scalar(const uint16_t* w, const uint16_t* x, int64_t k, float* out) {
  for (int i = 0; i < 4; ++i) out[i] = dot_scalar(w + i * k, x, k);
}

// 16 bf16 as 16 floats (the 16-bit shift that widens bf16 exactly)
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 widen16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows4_avx512(const uint16_t* w, const uint16_t* x,
                                                                        int64_t k, float* out) {
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t j = 0; j < k; j += 16) {
    const __mmask16 m = k - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - j)) - 1);
    const __m512 xv = widen16(x + j, m);
    for (int i = 0; i < 4; ++i) a[i] = _mm512_fmadd_ps(widen16(w + i * k + j, m), xv, a[i]);
  }
  for (int i = 0; i < 4; ++i) out[i] = _mm512_reduce_add_ps(a[i]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void rows4_bf16dp(const uint16_t* w,
                                                                                   const uint16_t* x, int64_t k,
                                                                                   float* out) {
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t j = 0; j < k; j += 32) {
    const __mmask32 m = k - j >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1ull << (k - j)) - 1);
    const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + j);
    for (int i = 0; i < 4; ++i) {
      a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)_mm512_maskz_loadu_epi16(m, w + i * k + j), xv);
    }
  }
  for (int i = 0; i < 4; ++i) out[i] = _mm512_reduce_add_ps(a[i]);
}

int64_t level_from_cpu() {
  __builtin_cpu_init();
  const bool f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
  if (f && __builtin_cpu_supports("avx512bf16")) return 2;
  if (f) return 1;
  return 0;
}

RowsFn rows_fn(int64_t level) {
  static const int64_t best = level_from_cpu();
  const int64_t use = level < 0 ? best : std::min(level, best);
  return use == 2 ? rows4_bf16dp : use == 1 ? rows4_avx512 : rows4_scalar;
}

// ``x`` [M, K] bf16 times ``w`` [N, K] bf16 (+ ``bias`` [N] bf16): [M, N] bf16. ``level``: -1 the best here, or a
// lower instruction set (tests): 2 AVX512-BF16, 1 AVX512F, 0 plain C++.
at::Tensor bf16_gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias, int64_t level) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "bf16_gemv: x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "bf16_gemv: bf16 x and w");
  const int64_t m = x.size(0), n = w.size(0), k = w.size(1);
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kBFloat16 && b.numel() == n, "bf16_gemv: bf16 bias [N]");
  }
  at::Tensor y = at::empty({m, n}, x.options());
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(wc.data_ptr<at::BFloat16>());
  const at::BFloat16* bp = b.defined() ? b.data_ptr<at::BFloat16>() : nullptr;
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const RowsFn fn = rows_fn(level);
  const int64_t quads = (n + 3) / 4;
  at::parallel_for(0, quads, 4, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t i0 = q * 4, rows = std::min<int64_t>(4, n - i0);
      for (int64_t r = 0; r < m; ++r) {
        float acc[4];
        if (rows == 4) {
          fn(wp + i0 * k, xp + r * k, k, acc);
        } else {  // the last rows of a layer whose outputs are not a multiple of 4: the plain loop, row by row
          for (int64_t i = 0; i < rows; ++i) acc[i] = dot_scalar(wp + (i0 + i) * k, xp + r * k, k);
        }
        for (int64_t i = 0; i < rows; ++i) {
          const float v = acc[i] + (bp ? static_cast<float>(bp[i0 + i]) : 0.f);
          yp[r * n + i0 + i] = at::BFloat16(v);
        }
      }
    }
  });
  return y;
}

int64_t bf16_gemv_level() { return level_from_cpu(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchslim_cpu, lib) {
  lib.def("bf16_gemv(Tensor x, Tensor w, Tensor? bias, int level) -> Tensor");
  lib.def("bf16_gemv_level() -> int", &bf16_gemv_level);
}

TORCH_LIBRARY_IMPL(torchslim_cpu, CPU, lib) { lib.impl("bf16_gemv", &bf16_gemv); }
