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

#if defined(__AVX512F__)
#include <immintrin.h>
#define OSSAI_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
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

#ifdef OSSAI_AVX512
// AVX-512 MXFP4 path. One block's 16 bytes widen to 16 int32 lanes; vpermps looks each lane's low four
// bits up in a 16-float table already multiplied by the block's scale, so the low nibbles give the 16 even
// elements and the same lanes shifted right by 4 give the 16 odd ones: 7 instructions per 32 weights.
// x is deinterleaved beforehand (per block: 16 even, then 16 odd elements) to match.
// A tile is R weight rows by M rows of x with R*M register accumulators: each decoded block feeds M rows
// of x and each x load feeds R weight rows, so neither the decoding nor the L1/L2 traffic for x grows with
// the other dimension (with one weight row per pass, x was re-read from L2 for every row of W).
constexpr int64_t kRowsW = 4;  // R
constexpr int64_t kRowsX = 4;  // M at most

alignas(64) constexpr float kFp4Table[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// out[j * ldo + r] = dot(row r of W, row j of x), for R rows of W from `rows` (row stride G*16 bytes).
template <int64_t R, int64_t M>
inline void mxfp4_tile_avx512(const uint8_t* rows, const uint8_t* scales, int64_t G, const float* Xd,
                              int64_t K, float* out, int64_t ldo) {
  const __m512 table = _mm512_load_ps(kFp4Table);
  __m512 acc[R][M];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 even[R], odd[R];
    for (int64_t r = 0; r < R; ++r) {
      const __m512 scaled = _mm512_mul_ps(table, _mm512_set1_ps(kScales.full[scales[r * G + g]]));
      const __m512i lanes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + (r * G + g) * 16)));
      even[r] = _mm512_permutexvar_ps(lanes, scaled);  // vpermps reads bits 0-3: the low nibble
      odd[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(lanes, 4), scaled);
    }
    const float* xg = Xd + g * 32;
    for (int64_t j = 0; j < M; ++j) {
      const __m512 xe = _mm512_loadu_ps(xg + j * K);
      const __m512 xo = _mm512_loadu_ps(xg + j * K + 16);
      for (int64_t r = 0; r < R; ++r) {
        acc[r][j] = _mm512_fmadd_ps(even[r], xe, acc[r][j]);
        acc[r][j] = _mm512_fmadd_ps(odd[r], xo, acc[r][j]);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) out[j * ldo + r] = _mm512_reduce_add_ps(acc[r][j]);
}

// R rows of W (from row o) against all n rows of x, written to Y[:, o:o+R] (row stride O).
template <int64_t R>
void mxfp4_rows_avx512(const uint8_t* B, const uint8_t* S, int64_t o, int64_t G, const float* Xd, int64_t K,
                       int64_t n, float* Y, int64_t O) {
  const uint8_t* rows = B + o * G * 16;
  const uint8_t* scales = S + o * G;
  for (int64_t t0 = 0; t0 < n; t0 += kRowsX) {
    const float* x = Xd + t0 * K;
    float* y = Y + t0 * O + o;
    switch (std::min(kRowsX, n - t0)) {
      case 4: mxfp4_tile_avx512<R, 4>(rows, scales, G, x, K, y, O); break;
      case 3: mxfp4_tile_avx512<R, 3>(rows, scales, G, x, K, y, O); break;
      case 2: mxfp4_tile_avx512<R, 2>(rows, scales, G, x, K, y, O); break;
      default: mxfp4_tile_avx512<R, 1>(rows, scales, G, x, K, y, O); break;
    }
  }
}

// bf16 weights against fp32 x, AVX-512: 16 weights of a row widen to fp32 in two instructions (bf16 is
// the top half of an fp32), and an R x M tile of register accumulators lets each converted weight vector
// feed M rows of x and each x load feed R weight rows. With one accumulator per row pair, a step of 8
// streams was bound by loads and horizontal sums, not by the multiply-adds.
template <int64_t R, int64_t M, bool Tail>
inline void bf16_step_avx512(const uint16_t* W, int64_t K, const float* X, int64_t k, __mmask16 mask,
                             __m512 (&acc)[R][M]) {
  __m512 w[R];
  for (int64_t r = 0; r < R; ++r) {
    const __m256i half = Tail ? _mm256_maskz_loadu_epi16(mask, W + r * K + k)
                              : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + r * K + k));
    w[r] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
  for (int64_t j = 0; j < M; ++j) {
    const __m512 x = Tail ? _mm512_maskz_loadu_ps(mask, X + j * K + k) : _mm512_loadu_ps(X + j * K + k);
    for (int64_t r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(w[r], x, acc[r][j]);
  }
}

template <int64_t R, int64_t M>
inline void bf16_tile_avx512(const uint16_t* W, int64_t K, const float* X, float* out, int64_t ldo) {
  __m512 acc[R][M];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_ps();
  const int64_t whole = K / 16 * 16;
  for (int64_t k = 0; k < whole; k += 16) bf16_step_avx512<R, M, false>(W, K, X, k, 0xFFFF, acc);
  if (whole < K) bf16_step_avx512<R, M, true>(W, K, X, whole, __mmask16((1u << (K - whole)) - 1), acc);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) out[j * ldo + r] = _mm512_reduce_add_ps(acc[r][j]);
}

// R rows of W (from row o) against all n rows of x, into Y[:, o:o+R] (row stride O).
template <int64_t R>
void bf16_rows_avx512(const uint16_t* W, int64_t o, int64_t K, const float* X, int64_t n, float* Y, int64_t O) {
  const uint16_t* rows = W + o * K;
  for (int64_t t0 = 0; t0 < n; t0 += kRowsX) {
    const float* x = X + t0 * K;
    float* y = Y + t0 * O + o;
    switch (std::min(kRowsX, n - t0)) {
      case 4: bf16_tile_avx512<R, 4>(rows, K, x, y, O); break;
      case 3: bf16_tile_avx512<R, 3>(rows, K, x, y, O); break;
      case 2: bf16_tile_avx512<R, 2>(rows, K, x, y, O); break;
      default: bf16_tile_avx512<R, 1>(rows, K, x, y, O); break;
    }
  }
}

// x [n, K] -> per 32-column block: the 16 even columns, then the 16 odd ones (the nibble order above).
std::vector<float> deinterleave_blocks(const float* X, int64_t n, int64_t K) {
  std::vector<float> out(n * K);
  for (int64_t i = 0; i < n * K; i += 32) {
    for (int j = 0; j < 16; ++j) {
      out[i + j] = X[i + 2 * j];
      out[i + 16 + j] = X[i + 2 * j + 1];
    }
  }
  return out;
}
#endif

// Y[t, :] += bias for each of the n rows (nothing when there is no bias).
inline void add_bias(float* Y, const float* bias, int64_t n, int64_t O) {
  if (bias == nullptr) return;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < O; ++o) Y[t * O + o] += bias[o];
}

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

#ifdef OSSAI_AVX512
  const std::vector<float> Xd = deinterleave_blocks(X, n, K);
  at::parallel_for(0, (O + kRowsW - 1) / kRowsW, 2, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t o0 = tile * kRowsW;
      if (o0 + kRowsW <= O) {
        mxfp4_rows_avx512<kRowsW>(B, S, o0, G, Xd.data(), K, n, Y, O);
      } else {
        for (int64_t o = o0; o < O; ++o) mxfp4_rows_avx512<1>(B, S, o, G, Xd.data(), K, n, Y, O);
      }
    }
  });
  add_bias(Y, bias_ptr, n, O);
  return out;
#endif

  at::parallel_for(0, O, 8, [&](int64_t o_begin, int64_t o_end) {
    std::vector<float> acc(n);
    alignas(64) float w[32];
    for (int64_t o = o_begin; o < o_end; ++o) {
      const uint8_t* row = B + o * G * 16;
      const uint8_t* row_scales = S + o * G;
#if defined(OSSAI_AVX2)
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
#ifdef OSSAI_AVX512
  at::parallel_for(0, (O + kRowsW - 1) / kRowsW, 8, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t o0 = tile * kRowsW;
      if (o0 + kRowsW <= O) {
        bf16_rows_avx512<kRowsW>(W, o0, K, X, n, Y, O);
      } else {
        for (int64_t o = o0; o < O; ++o) bf16_rows_avx512<1>(W, o, K, X, n, Y, O);
      }
    }
  });
  add_bias(Y, bias_ptr, n, O);
  return out;
#endif
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
