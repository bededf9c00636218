// CPU kernels for decode-sized products (a few rows of activations against large weights).
//
// Fused MXFP4 matrix product: y = x @ dequant(W)^T + b, reading W in its packed form.
//
// W is [O, G, 16] bytes of E2M1 nibbles (low nibble = even element) with one E8M0 scale per 32 values.
// Each block is unpacked to 32 floats in registers/L1 once and used for every row of x, so the packed
// weights are read once per call and a dequantized matrix never exists. Accumulation is fp32.
// Reference: ossai/model/mxfp4.py (dequantize) + torch.nn.functional.linear.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define OSSAI_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr float kFp4[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                            -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

struct PairTable {  // byte -> (value of low nibble, value of high nibble)
  float v[256][2];
  PairTable() {
    for (int b = 0; b < 256; ++b) {
      v[b][0] = kFp4[b & 15];
      v[b][1] = kFp4[b >> 4];
    }
  }
};
const PairTable kPairs;

struct ScaleTable {  // E8M0 byte -> 2^(byte - 127), and half of it (for the doubled int8 value table)
  float full[256], half[256];
  ScaleTable() {
    for (int e = 0; e < 256; ++e) {
      full[e] = std::ldexp(1.0f, e - 127);
      half[e] = std::ldexp(1.0f, e - 128);
    }
  }
};
const ScaleTable kScales;  // a table lookup per block instead of a libm ldexp call

// acc[t] += scale * dot(w[0:len], x[t, 0:len]) for the n rows of x (row stride ld). Four rows at a time,
// so every weight loaded from L1 feeds four multiply-adds.
inline void accumulate_rows(const float* w, const float* x, int64_t ld, int64_t n, int64_t len, float scale,
                            float* acc) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const float* x0 = x + t * ld;
    const float* x1 = x0 + ld;
    const float* x2 = x1 + ld;
    const float* x3 = x2 + ld;
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t k = 0; k < len; ++k) {
      const float wk = w[k];
      d0 += wk * x0[k];
      d1 += wk * x1[k];
      d2 += wk * x2[k];
      d3 += wk * x3[k];
    }
    acc[t] += d0 * scale;
    acc[t + 1] += d1 * scale;
    acc[t + 2] += d2 * scale;
    acc[t + 3] += d3 * scale;
  }
  for (; t < n; ++t) {
    const float* xr = x + t * ld;
    float d = 0.0f;
#pragma omp simd reduction(+ : d)
    for (int64_t k = 0; k < len; ++k) d += w[k] * xr[k];
    acc[t] += d * scale;
  }
}


#ifdef OSSAI_AVX2
// AVX2 MXFP4 path: nibbles decoded 16 at a time with a byte shuffle, up to 4 rows of x per pass with one
// register accumulator each. (The bf16 product is left to the compiler's vectorizer, which does as well.)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

// 16 packed bytes -> 32 floats (times 2: the table holds 2x the E2M1 values as int8), times `scale`.
inline void decode_block(const uint8_t* block, __m256 scale, __m256 w[4]) {
  const __m128i table = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const __m128i nibble = _mm_set1_epi8(0x0F);
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block));
  const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(bytes, nibble));
  const __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble));
  const __m128i first = _mm_unpacklo_epi8(lo, hi);  // elements 0..15: low nibble is the even element
  const __m128i second = _mm_unpackhi_epi8(lo, hi);  // elements 16..31
  w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(first)), scale);
  w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(first, 8))), scale);
  w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(second)), scale);
  w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(second, 8))), scale);
}

void mxfp4_row_avx2(const uint8_t* row, const uint8_t* row_scales, int64_t G, const float* X, int64_t K,
                    int64_t n, float* out) {
  for (int64_t t0 = 0; t0 < n; t0 += 4) {
    const int64_t m = std::min<int64_t>(4, n - t0);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t g = 0; g < G; ++g) {
      __m256 w[4];
      // 2^(e - 128): the E8M0 scale, halved for the doubled table
      decode_block(row + g * 16, _mm256_set1_ps(kScales.half[row_scales[g]]), w);
      for (int64_t j = 0; j < m; ++j) {
        const float* xr = X + (t0 + j) * K + g * 32;
        __m256 a = acc[j];
        a = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xr), a);
        a = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xr + 8), a);
        a = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xr + 16), a);
        a = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xr + 24), a);
        acc[j] = a;
      }
    }
    for (int64_t j = 0; j < m; ++j) out[t0 + j] = hsum(acc[j]);
  }
}

#endif

// The bias as contiguous fp32 (an undefined tensor when there is none).
torch::Tensor float_bias(const c10::optional<torch::Tensor>& bias, int64_t O) {
  if (!bias.has_value()) return {};
  torch::Tensor out = bias->to(torch::kFloat32).contiguous();
  TORCH_CHECK(out.numel() == O, "bias must have ", O, " values");
  return out;
}

}  // namespace

torch::Tensor mxfp4_linear(torch::Tensor x, torch::Tensor blocks, torch::Tensor scales,
                           c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [n, K]");
  TORCH_CHECK(blocks.dim() == 3 && blocks.size(2) == 16 && blocks.scalar_type() == torch::kUInt8,
              "blocks must be uint8 [O, G, 16]");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == blocks.size(0) && scales.size(1) == blocks.size(1) &&
                  scales.scalar_type() == torch::kUInt8,
              "scales must be uint8 [O, G]");
  const int64_t n = x.size(0), K = x.size(1), O = blocks.size(0), G = blocks.size(1);
  TORCH_CHECK(G * 32 == K, "x has ", K, " columns but the weights ", G * 32);
  auto xc = x.contiguous();
  auto bc = blocks.contiguous();
  auto sc = scales.contiguous();
  const torch::Tensor bf = float_bias(bias, O);
  auto out = torch::empty({n, O}, x.options());
  const float* X = xc.data_ptr<float>();
  const uint8_t* B = bc.data_ptr<uint8_t>();
  const uint8_t* S = sc.data_ptr<uint8_t>();
  const float* bias_ptr = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* Y = out.data_ptr<float>();

  at::parallel_for(0, O, 8, [&](int64_t o_begin, int64_t o_end) {
    std::vector<float> acc(n);
    alignas(64) float w[32];
    for (int64_t o = o_begin; o < o_end; ++o) {
      const uint8_t* row = B + o * G * 16;
      const uint8_t* row_scales = S + o * G;
#ifdef OSSAI_AVX2
      mxfp4_row_avx2(row, row_scales, G, X, K, n, acc.data());
#else
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t g = 0; g < G; ++g) {
        const uint8_t* block = row + g * 16;
        for (int j = 0; j < 16; ++j) {
          w[2 * j] = kPairs.v[block[j]][0];
          w[2 * j + 1] = kPairs.v[block[j]][1];
        }
        const float scale = kScales.full[row_scales[g]];
        accumulate_rows(w, X + g * 32, K, n, 32, scale, acc.data());
      }
#endif
      for (int64_t t = 0; t < n; ++t) Y[t * O + o] = acc[t] + (bias_ptr ? bias_ptr[o] : 0.0f);
    }
  });
  return out;
}

// y = x @ W^T + b for bf16 W and fp32 x, converting W in registers (decode: the attention projections,
// the router and the unembedding, read once per step instead of upcast to a float copy first).
torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [n, K]");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kBFloat16 && weight.is_contiguous(),
              "weight must be contiguous bfloat16 [O, K]");
  const int64_t n = x.size(0), K = x.size(1), O = weight.size(0);
  TORCH_CHECK(weight.size(1) == K, "x has ", K, " columns but the weight ", weight.size(1));
  auto xc = x.contiguous();
  const torch::Tensor bf = float_bias(bias, O);
  auto out = torch::empty({n, O}, x.options());
  const float* X = xc.data_ptr<float>();
  const uint16_t* W = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const float* bias_ptr = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* Y = out.data_ptr<float>();
  constexpr int64_t kChunk = 256;  // a slice of kRows weight rows converted once, used for every row of x
  constexpr int64_t kRows = 4;     // weight rows per tile: each x element loaded feeds kRows multiply-adds

  at::parallel_for(0, (O + kRows - 1) / kRows, 4, [&](int64_t tile_begin, int64_t tile_end) {
    std::vector<float> acc(kRows * n);
    alignas(64) float w[kRows][kChunk];
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t o0 = tile * kRows;
      const int64_t rows = std::min(kRows, O - o0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t len = std::min(kChunk, K - k0);
        for (int64_t r = 0; r < kRows; ++r) {
          const uint16_t* row = W + (o0 + std::min(r, rows - 1)) * K + k0;  // a short tile repeats its last row
#pragma omp simd
          for (int64_t k = 0; k < len; ++k) {
            const uint32_t bits = static_cast<uint32_t>(row[k]) << 16;
            float f;
            std::memcpy(&f, &bits, sizeof f);
            w[r][k] = f;
          }
        }
        for (int64_t t = 0; t < n; ++t) {
          const float* xr = X + t * K + k0;
          float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
          for (int64_t k = 0; k < len; ++k) {
            const float xk = xr[k];
            d0 += w[0][k] * xk;
            d1 += w[1][k] * xk;
            d2 += w[2][k] * xk;
            d3 += w[3][k] * xk;
          }
          acc[0 * n + t] += d0;
          acc[1 * n + t] += d1;
          acc[2 * n + t] += d2;
          acc[3 * n + t] += d3;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t t = 0; t < n; ++t) Y[t * O + o0 + r] = acc[r * n + t] + (bias_ptr ? bias_ptr[o0 + r] : 0.0f);
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // the GIL is released: the server's event loop keeps serving while a step runs
  m.def("bf16_linear", &bf16_linear, "y = x @ W^T + b for bf16 W, fp32 x (fp32 accumulation)", py::arg("x"),
        py::arg("weight"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("mxfp4_linear", &mxfp4_linear, "y = x @ dequant(mxfp4 W)^T + b, fused (fp32)", py::arg("x"),
        py::arg("blocks"), py::arg("scales"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());
}
