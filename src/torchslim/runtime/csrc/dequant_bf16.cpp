// Stored int4 / int8 codes to bf16 in one pass, for the many-row matmuls of prefill (they run in bf16 on the weight
// dequantized per call). Instruction sets chosen at run time: 512-bit registers where the CPU has AVX512BW, plain
// C++ elsewhere (the Python side uses this op only where the 512-bit path runs).
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

#define AVX512 "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"

bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// -- dequantization to bf16 (prefill: the many-row matmul runs in bf16 on the weight dequantized per call) ----
// ``packed``: a layer's stored codes, 4 or 8 bits each, little-endian (code i in bits [i * bits, (i + 1) * bits)
// of the stream), rows of ``kp`` codes; ``scale``/``offset`` [N, G] float (offset optional); ``shift``: -8 / -128
// for symmetric codes stored unsigned, else 0. Returns w = (u + shift) * scale + offset as bf16 [N, k_out]
// (k_out <= kp: the row's real inputs), in the tensor path's order (v * s, then + o) and rounded to nearest even
// as torch's float -> bf16 cast does: bit for bit its result, in one pass over the codes and the output where the
// tensor ops made five over weight-sized float tensors.
inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);  // finite weights: no NaN case
}

template <int Bits>
inline int code_at(const uint8_t* row, int64_t j) {
  if constexpr (Bits == 8) return row[j];
  return j & 1 ? row[j >> 1] >> 4 : row[j >> 1] & 0x0F;
}

template <int Bits, bool HasOffset>
void dequant_row(const uint8_t* row, const float* sc, const float* of, int64_t group, int64_t k_out, int shift,
                 uint16_t* out) {
  for (int64_t j0 = 0; j0 < k_out; j0 += group) {
    const int64_t g = j0 / group, end = std::min(k_out, j0 + group);
    const float s = sc[g], o = HasOffset ? of[g] : 0.f;
    for (int64_t j = j0; j < end; ++j) {
      const float v = float(code_at<Bits>(row, j) + shift);
      out[j] = to_bf16_bits(HasOffset ? v * s + o : v * s);
    }
  }
}

// The same on 512-bit registers, 32 codes at a time (int4: 16 bytes whose two nibbles are interleaved back to
// input order; int8: 32 bytes), widened to int32, then the same float operations and the same rounding.
template <int Bits>
__attribute__((target(AVX512))) void dequant_row_avx512(const uint8_t* row, const float* sc,
                                                                   const float* of, int64_t group, int64_t k_out,
                                                                   int shift, uint16_t* out) {
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m512i vshift = _mm512_set1_epi32(shift), round = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
  for (int64_t j0 = 0; j0 < k_out; j0 += group) {
    const int64_t g = j0 / group, end = std::min(k_out, j0 + group);
    const __m512 s = _mm512_set1_ps(sc[g]), o = _mm512_set1_ps(of ? of[g] : 0.f);
    int64_t j = j0;
    for (; j + 32 <= end; j += 32) {
      __m128i halves[2];
      if constexpr (Bits == 8) {
        halves[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j));
        halves[1] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j + 16));
      } else {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j / 2));
        const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        halves[0] = _mm_unpacklo_epi8(lo, hi);
        halves[1] = _mm_unpackhi_epi8(lo, hi);
      }
      for (int h = 0; h < 2; ++h) {
        const __m512 v = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_cvtepu8_epi32(halves[h]), vshift));
        __m512 w = _mm512_mul_ps(v, s);
        if (of) w = _mm512_add_ps(w, o);
        const __m512i u = _mm512_castps_si512(w);
        const __m512i r = _mm512_srli_epi32(
            _mm512_add_epi32(_mm512_add_epi32(u, round), _mm512_and_si512(_mm512_srli_epi32(u, 16), one)), 16);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j + 16 * h), _mm512_cvtepi32_epi16(r));
      }
    }
    if (j < end) {  // a row's last inputs, short of 32, by the plain loop (j is even: whole int4 bytes)
      const uint8_t* at = row + j * Bits / 8;
      if (of) {
        dequant_row<Bits, true>(at, sc + g, of + g, end - j, end - j, shift, out + j);
      } else {
        dequant_row<Bits, false>(at, sc + g, nullptr, end - j, end - j, shift, out + j);
      }
    }
  }
}

template <int Bits>
void dequant_rows(const uint8_t* pp, const float* sp, const float* op, int64_t n, int64_t groups, int64_t kp,
                  int64_t k_out, int shift, uint16_t* yp) {
  const int64_t group = kp / groups;
  static const bool wide = has_avx512();
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(k_out, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* row = pp + r * kp * Bits / 8;
      const float *sr = sp + r * groups, *orow = op ? op + r * groups : nullptr;
      if (wide) {
        dequant_row_avx512<Bits>(row, sr, orow, group, k_out, shift, yp + r * k_out);
      } else if (orow) {
        dequant_row<Bits, true>(row, sr, orow, group, k_out, shift, yp + r * k_out);
      } else {
        dequant_row<Bits, false>(row, sr, nullptr, group, k_out, shift, yp + r * k_out);
      }
    }
  });
}

at::Tensor dequant_bf16(const at::Tensor& packed, const at::Tensor& scale, const c10::optional<at::Tensor>& offset,
                        int64_t kp, int64_t k_out, int64_t shift, int64_t bits) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && scale.scalar_type() == at::kFloat && scale.dim() == 2,
              "dequant_bf16: uint8 codes and a float [N, G] scale");
  TORCH_CHECK(bits == 4 || bits == 8, "dequant_bf16: 4 or 8 bits");
  const int64_t n = scale.size(0), groups = scale.size(1);
  TORCH_CHECK(groups > 0 && kp % groups == 0 && k_out <= kp && packed.numel() * 8 >= n * kp * bits,
              "dequant_bf16: shapes");
  TORCH_CHECK(bits == 8 || (kp % 2 == 0 && (kp / groups) % 2 == 0), "dequant_bf16: int4 rows and groups of whole bytes");
  const at::Tensor pk = packed.contiguous(), s = scale.contiguous();
  at::Tensor o;
  if (offset.has_value() && offset->defined()) {
    o = offset->contiguous();
    TORCH_CHECK(o.scalar_type() == at::kFloat && o.sizes() == s.sizes(), "dequant_bf16: offset like scale");
  }
  at::Tensor y = at::empty({n, k_out}, scale.options().dtype(at::kBFloat16));
  const uint8_t* pp = pk.data_ptr<uint8_t>();
  const float *sp = s.data_ptr<float>(), *op = o.defined() ? o.data_ptr<float>() : nullptr;
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  if (bits == 8) {
    dequant_rows<8>(pp, sp, op, n, groups, kp, k_out, int(shift), yp);
  } else {
    dequant_rows<4>(pp, sp, op, n, groups, kp, k_out, int(shift), yp);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchslim_cpu, lib) {
  lib.def("dequant_bf16(Tensor packed, Tensor scale, Tensor? offset, int kp, int k_out, int shift, int bits) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchslim_cpu, CPU, lib) { lib.impl("dequant_bf16", &dequant_bf16); }
