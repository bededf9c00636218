// CPU kernels: the MXFP4 and bf16 matrix products, the whole mixture-of-experts block, and attention over
// the paged KV cache. Activations and accumulation are fp32, so results match the plain-torch reference
// (ossai/model) up to summation order.
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
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// f(begin, end) over [0, n): each thread walks its own contiguous share front to back, `chunk` items at a
// time, and a thread done with its share then takes chunks from the back of the others'. A decode product
// is one sequential stream of weights per thread (which the hardware prefetchers follow best: handing out
// chunks in turn measured 10% slower), and with fixed shares the thread whose reads ran slower left the
// other waiting at the end of every product (libgomp's wait was 12% of a decode step's samples).
template <typename F>
void parallel_shares(int64_t n, int64_t chunk, F&& f) {
  TORCH_CHECK(n < (int64_t{1} << 32), "parallel_shares: ", n, " items");  // the packed halves are 32-bit
  const int64_t chunks = (n + chunk - 1) / chunk;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunks));
  if (threads == 1 || at::in_parallel_region()) {
    f(int64_t{0}, n);
    return;
  }
  // share p is [front, back), packed in one word so that the owner's front and a thief's back move
  // together: a chunk is taken by exactly one thread
  std::vector<std::atomic<uint64_t>> shares(threads);
  auto pack = [](uint64_t front, uint64_t back) { return front | back << 32; };
  for (int64_t p = 0; p < threads; ++p) shares[p] = pack(n * p / threads, n * (p + 1) / threads);
  auto take = [&](int64_t q, bool from_front) {
    for (uint64_t v = shares[q].load();;) {
      const uint64_t front = v & 0xFFFFFFFFu, back = v >> 32;
      if (front >= back) return;
      const uint64_t size = std::min<uint64_t>(chunk, back - front);
      const uint64_t begin = from_front ? front : back - size;
      if (shares[q].compare_exchange_weak(v, from_front ? pack(front + size, back) : pack(front, begin))) {
        f(static_cast<int64_t>(begin), static_cast<int64_t>(begin + size));
        v = shares[q].load();
      }
    }
  };
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      take(p, true);  // its own share, front to back
      for (int64_t q = (p + 1) % threads; q != p; q = (q + 1) % threads) take(q, false);  // the others' backs
    }
  });
}

constexpr float kFp4[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                            -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
alignas(16) constexpr int8_t kDoubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};  // 2 * kFp4

// 2v + 12 for each doubled value v, four times over (the int8 products' unsigned weights; the byte
// shuffles and vpermb below look them up by the low 4 bits of an index, so every copy is the same)
struct Q8Table {
  alignas(64) uint8_t v[64];
  constexpr Q8Table() : v{} {
    for (int i = 0; i < 64; ++i) v[i] = static_cast<uint8_t>(kDoubled[i & 15] + 12);
  }
};
constexpr Q8Table kQ8Table;

// vpermps indices that give each of a 64-byte chunk's 4 blocks (4 int32 lanes each) its block's scale from a
// vector of 16 consecutive blocks' scales: row c holds 4c, 4c, 4c, 4c, 4c+1, ... (the chunk's c-th of 4).
struct Q8Spread {
  alignas(64) int32_t v[4][16];
  constexpr Q8Spread() : v{} {
    for (int c = 0; c < 4; ++c)
      for (int lane = 0; lane < 16; ++lane) v[c][lane] = 4 * c + lane / 4;
  }
};
constexpr Q8Spread kSpread;

// A bf16 value (the top half of an fp32) as float.
inline float bf16_to_float(uint16_t half) {
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

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
  const __m128i table = _mm_load_si128(reinterpret_cast<const __m128i*>(kDoubled));
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
// M at most for the fp32 and bf16 tiles: 4 x 6 accumulators, 4 weight vectors and x fill 29 of the 32
// registers (the MXFP4 and int8 tiles also hold their unpacked weights)
constexpr int64_t kRowsXFloat = 6;

// A loaded vector that feeds several multiply-adds, kept in a register: GCC otherwise folds the load into
// each of them as a memory operand and re-reads it R times per step. Zen 4 loads one 512-bit vector per
// cycle, so a 4 x 4 tile ran at half its multiply-add rate (29 -> 56 GFMA/s on one core from L2).
template <typename V>
inline V in_register(V v) {
  asm("" : "+v"(v));
  return v;
}

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
      const __m512 xe = in_register(_mm512_loadu_ps(xg + j * K));
      const __m512 xo = in_register(_mm512_loadu_ps(xg + j * K + 16));
      for (int64_t r = 0; r < R; ++r) {
        acc[r][j] = _mm512_fmadd_ps(even[r], xe, acc[r][j]);
        acc[r][j] = _mm512_fmadd_ps(odd[r], xo, acc[r][j]);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) out[j * ldo + r] = _mm512_reduce_add_ps(acc[r][j]);
}

// dot(one weight row, one row of x): mxfp4_tile_avx512<1, 1> for decode with four accumulators. With one,
// every block's two multiply-adds waited on the previous block's (8 cycles of latency per 17 bytes), which
// bound a decode MoE layer, not the memory.
inline float mxfp4_row_avx512(const uint8_t* row, const uint8_t* scales, int64_t G, const float* Xd) {
  const __m512 table = _mm512_load_ps(kFp4Table);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  auto block = [&](int64_t g, __m512& even_acc, __m512& odd_acc) {
    const __m512 scaled = _mm512_mul_ps(table, _mm512_set1_ps(kScales.full[scales[g]]));
    const __m512i lanes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * 16)));
    even_acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(lanes, scaled), _mm512_loadu_ps(Xd + g * 32), even_acc);
    odd_acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(lanes, 4), scaled),
                              _mm512_loadu_ps(Xd + g * 32 + 16), odd_acc);
  };
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    block(g, acc[0], acc[1]);
    block(g + 1, acc[2], acc[3]);
  }
  if (g < G) block(g, acc[0], acc[1]);
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
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

// 16 bf16 values -> fp32 in two instructions: bf16 is the top half of an fp32.
inline __m512 widen_bf16(__m256i half) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// bf16 weights against fp32 x, AVX-512: 16 weights of a row widen to fp32 (`widen_bf16`), and an R x M
// tile of register accumulators lets each converted weight vector feed M rows of x and each x load feed
// R weight rows. With one accumulator per row pair, a step of 8 streams was bound by loads and horizontal
// sums, not by the multiply-adds.
template <int64_t R, int64_t M, bool Tail>
inline void bf16_step_avx512(const uint16_t* W, int64_t K, const float* X, int64_t k, __mmask16 mask,
                             __m512 (&acc)[R][M]) {
  __m512 w[R];
  for (int64_t r = 0; r < R; ++r) {
    // 1 KB ahead of each weight row: with a tile's multiply-adds between its loads, the hardware
    // prefetchers alone kept too few lines in flight (8 streams' unembedding: 14.5 -> 17.9 GB/s)
    if (!Tail) _mm_prefetch(reinterpret_cast<const char*>(W + r * K + k + 512), _MM_HINT_T0);
    const __m256i half = Tail ? _mm256_maskz_loadu_epi16(mask, W + r * K + k)
                              : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + r * K + k));
    w[r] = widen_bf16(half);
  }
  for (int64_t j = 0; j < M; ++j) {
    const float* xk = X + j * K + k;
    const __m512 x = in_register(Tail ? _mm512_maskz_loadu_ps(mask, xk) : _mm512_loadu_ps(xk));
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

// dot(w, x) for one bf16 row against one fp32 row, the row read front to back as a single stream with
// four accumulators. For a single activation row (decode) this read 5-12% faster from DRAM than 8 rows
// interleaved, and as fast as a loop that only loads the bytes (BENCHMARKS.md): one sequential stream per
// thread is what the hardware prefetchers follow best, and x stays in L1 either way.
inline float bf16_row_avx512(const uint16_t* w, int64_t K, const float* x) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  auto widen = [](const uint16_t* p, __mmask16 mask) { return widen_bf16(_mm256_maskz_loadu_epi16(mask, p)); };
  for (; k + 64 <= K; k += 64) {
    a0 = _mm512_fmadd_ps(widen(w + k, 0xFFFF), _mm512_loadu_ps(x + k), a0);
    a1 = _mm512_fmadd_ps(widen(w + k + 16, 0xFFFF), _mm512_loadu_ps(x + k + 16), a1);
    a2 = _mm512_fmadd_ps(widen(w + k + 32, 0xFFFF), _mm512_loadu_ps(x + k + 32), a2);
    a3 = _mm512_fmadd_ps(widen(w + k + 48, 0xFFFF), _mm512_loadu_ps(x + k + 48), a3);
  }
  for (; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? 0xFFFF : __mmask16((1u << (K - k)) - 1);
    a0 = _mm512_fmadd_ps(widen(w + k, mask), _mm512_maskz_loadu_ps(mask, x + k), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// R rows of W (from row o) against all n rows of x, into Y[:, o:o+R] (row stride O).
template <int64_t R>
void bf16_rows_avx512(const uint16_t* W, int64_t o, int64_t K, const float* X, int64_t n, float* Y, int64_t O) {
  const uint16_t* rows = W + o * K;
  for (int64_t t0 = 0; t0 < n; t0 += kRowsXFloat) {
    const float* x = X + t0 * K;
    float* y = Y + t0 * O + o;
    switch (std::min(kRowsXFloat, n - t0)) {
      case 6: bf16_tile_avx512<R, 6>(rows, K, x, y, O); break;
      case 5: bf16_tile_avx512<R, 5>(rows, K, x, y, O); break;
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

// R rows of MXFP4 weights -> R x K floats in the deinterleaved block order of x (16 even, then 16 odd
// elements per block), for products against many rows of x where decoding once per tile pays.
template <int64_t R>
inline void decode_rows_avx512(const uint8_t* rows, const uint8_t* scales, int64_t G, float* out) {
  const __m512 table = _mm512_load_ps(kFp4Table);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const __m512 scaled = _mm512_mul_ps(table, _mm512_set1_ps(kScales.full[scales[r * G + g]]));
      const __m512i lanes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + (r * G + g) * 16)));
      float* o = out + r * G * 32 + g * 32;
      _mm512_storeu_ps(o, _mm512_permutexvar_ps(lanes, scaled));
      _mm512_storeu_ps(o + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(lanes, 4), scaled));
    }
  }
}

// out[j * ldo + r] = dot(W[r], X[j]) for R float rows of W and M rows of x (K a multiple of 16).
template <int64_t R, int64_t M>
inline void f32_tile_avx512(const float* W, int64_t K, const float* X, float* out, int64_t ldo) {
  __m512 acc[R][M];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 w[R];
    for (int64_t r = 0; r < R; ++r) w[r] = in_register(_mm512_loadu_ps(W + r * K + k));
    for (int64_t j = 0; j < M; ++j) {
      const __m512 x = in_register(_mm512_loadu_ps(X + j * K + k));
      for (int64_t r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(w[r], x, acc[r][j]);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) out[j * ldo + r] = _mm512_reduce_add_ps(acc[r][j]);
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

// -- Fused mixture of experts --------------------------------------------------------------------------

// Where element i of an activation row goes in the layout the MXFP4 product reads (deinterleaved blocks
// for AVX-512, as is otherwise).
inline int64_t x_slot(int64_t i) {
#ifdef OSSAI_AVX512
  const int64_t j = i & 31;
  return (i - j) + ((j & 1) ? 16 + (j >> 1) : (j >> 1));
#else
  return i;
#endif
}

// out[j * R + r] = dot(row o0 + r of W, row j of X) for r < R <= 4 and the n rows of X (laid out by
// x_slot, K = G * 32 columns). `scratch` holds n floats.
#ifdef OSSAI_AVX512
constexpr int64_t kDecodeOnceRows = 32;  // beyond, decoding a tile once beats re-decoding it per 4 rows
#endif

void rows_product(const uint8_t* B, const uint8_t* S, int64_t o0, int64_t R, int64_t G, const float* X,
                  int64_t n, float* out, float* scratch) {
  const int64_t K = G * 32;
#ifdef OSSAI_AVX512
  const uint8_t* rows = B + o0 * G * 16;
  const uint8_t* scales = S + o0 * G;
  if (R == 4 && n > kDecodeOnceRows) {  // many rows of x (prefill): decode the 4 weight rows once
    decode_rows_avx512<4>(rows, scales, G, scratch);
    for (int64_t t0 = 0; t0 < n; t0 += kRowsXFloat) {
      const float* x = X + t0 * K;
      float* y = out + t0 * R;
      switch (std::min(kRowsXFloat, n - t0)) {
        case 6: f32_tile_avx512<4, 6>(scratch, K, x, y, 4); break;
        case 5: f32_tile_avx512<4, 5>(scratch, K, x, y, 4); break;
        case 4: f32_tile_avx512<4, 4>(scratch, K, x, y, 4); break;
        case 3: f32_tile_avx512<4, 3>(scratch, K, x, y, 4); break;
        case 2: f32_tile_avx512<4, 2>(scratch, K, x, y, 4); break;
        default: f32_tile_avx512<4, 1>(scratch, K, x, y, 4); break;
      }
    }
    return;
  }
  for (int64_t t0 = 0; t0 < n; t0 += kRowsX) {
    const float* x = X + t0 * K;
    float* y = out + t0 * R;
    const int64_t m = std::min(kRowsX, n - t0);
    if (R == 4 && m > 1) {
      switch (m) {
        case 4: mxfp4_tile_avx512<4, 4>(rows, scales, G, x, K, y, 4); break;
        case 3: mxfp4_tile_avx512<4, 3>(rows, scales, G, x, K, y, 4); break;
        default: mxfp4_tile_avx512<4, 2>(rows, scales, G, x, K, y, 4); break;  // m == 2
      }
      continue;
    }
    for (int64_t r = 0; r < R; ++r) {
      switch (m) {
        case 4: mxfp4_tile_avx512<1, 4>(rows + r * G * 16, scales + r * G, G, x, K, y + r, R); break;
        case 3: mxfp4_tile_avx512<1, 3>(rows + r * G * 16, scales + r * G, G, x, K, y + r, R); break;
        case 2: mxfp4_tile_avx512<1, 2>(rows + r * G * 16, scales + r * G, G, x, K, y + r, R); break;
        default: y[r] = mxfp4_row_avx512(rows + r * G * 16, scales + r * G, G, x); break;
      }
    }
  }
#else
  for (int64_t r = 0; r < R; ++r) {
    const uint8_t* row = B + (o0 + r) * G * 16;
    const uint8_t* row_scales = S + (o0 + r) * G;
#if defined(OSSAI_AVX2)
    mxfp4_row_avx2(row, row_scales, G, X, K, n, scratch);
#else
    std::fill(scratch, scratch + n, 0.0f);
    alignas(64) float w[32];
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* block = row + g * 16;
      for (int j = 0; j < 16; ++j) {
        w[2 * j] = kPairs.v[block[j]][0];
        w[2 * j + 1] = kPairs.v[block[j]][1];
      }
      accumulate_rows(w, X + g * 32, K, n, 32, kScales.full[row_scales[g]], scratch);
    }
#endif
    for (int64_t j = 0; j < n; ++j) out[j * R + r] = scratch[j];
  }
#endif
}

// Floats a rows_product call needs as scratch for n rows of x and K columns.
inline int64_t scratch_floats(int64_t n, int64_t K) {
#ifdef OSSAI_AVX512
  (void)n;
  return 4 * K;  // 4 decoded weight rows
#else
  (void)K;
  return n;
#endif
}

// f(k, e, o0, R, m, tile) for every tile of 4 weight rows (R at the end) of every active expert
// e = active[k], whose m = start[k+1] - start[k] slots begin at slot start[k]; tile [m, R] holds their
// products, computed by product(e, o0, R, start[k], m, tile, scratch) with `scratch_n` floats of scratch.
// Work items run expert by expert, so a thread's consecutive items reuse one expert's rows of x from cache.
template <typename P, typename F>
void expert_tiles(int64_t rows, const std::vector<int64_t>& active, const std::vector<int64_t>& start,
                  int64_t scratch_n, P&& product, F&& f) {
  const int64_t tiles = (rows + 3) / 4, slots = start.back();
  const int64_t A = static_cast<int64_t>(active.size());
  parallel_shares(A * tiles, 16, [&](int64_t w0, int64_t w1) {
    thread_local std::vector<float> tile, scratch;  // a thread's chunks reuse them
    tile.resize(4 * slots);
    scratch.resize(scratch_n);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t k = w / tiles, o0 = w % tiles * 4, R = std::min<int64_t>(4, rows - o0);
      const int64_t e = active[k], m = start[k + 1] - start[k];
      product(e, o0, R, start[k], m, tile.data(), scratch.data());
      f(k, e, o0, R, m, tile.data());
    }
  });
}

// -- int8 activations (opt-in: moe(..., int8=true)) ------------------------------------------------------
// As llama.cpp's Q8_0: each 32-value block of an expert's input row is rounded to int8 with scale
// amax/127. Doubled, the E2M1 values are the integers -12..12, so a block's dot product is an exact int32
// sum (vpdpbusd: 64 products per instruction, no per-value unpacking), scaled once by both blocks' scales.
// Reference: mxfp4.round_to_int8_blocks in ossai/model/mxfp4.py applied to the experts' inputs.

constexpr int64_t kChunk = 128;  // values per chunk: 4 blocks, one 64-byte load of packed weights

// Rows of K = G * 32 values rounded to int8, laid out for the product. Per chunk c (blocks 4c..4c+3),
// q[c*128 + 16*b + j] is element 2j of block 4c+b and q[c*128 + 64 + 16*b + j] element 2j+1 (the order of
// the low and high nibbles); s[g] is block g's scale, halved for the doubled table; corr[c*16 + l] is -12
// times the sum of lane l's 4 + 4 bytes (vpdpbusd wants the weights unsigned, so they enter as 2v + 12 and
// the accumulator starts at the correction). Zero-padded to whole chunks, and s to whole 16-block groups.
struct Q8Rows {
  int64_t G, chunks, qn, sn, cn;
  std::vector<int8_t> q;
  std::vector<float> s;
  std::vector<int32_t> corr;
  Q8Rows(int64_t G_, int64_t n)
      : G(G_), chunks((G_ + 3) / 4), qn(chunks * kChunk), sn((G_ + 15) / 16 * 16), cn(chunks * 16),
        q(n * qn, 0), s(n * sn, 0.0f), corr(n * cn, 0) {}

  // Row i from x[0:G*32].
  void quantize(int64_t i, const float* x) {
    int8_t* qi = q.data() + i * qn;
    for (int64_t g = 0; g < G; ++g) {
      const float* xb = x + g * 32;
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::isnan(xb[j]) ? xb[j] : std::max(amax, std::fabs(xb[j]));
      int8_t* qb = qi + (g / 4) * kChunk + (g % 4) * 16;
      if (!std::isfinite(amax)) {  // NaN or inf in the block: the block's products are NaN, as the reference's
        s[i * sn + g] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const float d = amax / 127.0f;  // x / d, not x * (1/d): the reference rounds the same quotients
      s[i * sn + g] = d * 0.5f;
      auto round = [d](float v) {  // clamped: with a subnormal d the quotient can pass 127.5
        return d > 0.0f ? static_cast<int8_t>(std::clamp(std::nearbyint(v / d), -127.0f, 127.0f)) : int8_t{0};
      };
      for (int j = 0; j < 16; ++j) {
        qb[j] = round(xb[2 * j]);
        qb[64 + j] = round(xb[2 * j + 1]);
      }
    }
    for (int64_t c = 0; c < chunks; ++c) {
      for (int l = 0; l < 16; ++l) {
        int32_t sum = 0;
        for (int b = 0; b < 4; ++b) sum += qi[c * kChunk + 4 * l + b] + qi[c * kChunk + 64 + 4 * l + b];
        corr[i * cn + c * 16 + l] = -12 * sum;
      }
    }
  }
  void copy_row(int64_t to, const Q8Rows& from, int64_t i) {
    std::memcpy(q.data() + to * qn, from.q.data() + i * qn, qn);
    std::memcpy(s.data() + to * sn, from.s.data() + i * sn, sn * sizeof(float));
    std::memcpy(corr.data() + to * cn, from.corr.data() + i * cn, cn * sizeof(int32_t));
  }
};

// One block's exact integer product: the doubled E2M1 values of its 16 bytes against its 32 int8 inputs
// (qb: the 16 even elements, then at qb + 64 the 16 odd ones).
inline int32_t q8_block(const uint8_t* block, const int8_t* qb) {
  int32_t sum = 0;
  for (int j = 0; j < 16; ++j) sum += kDoubled[block[j] & 15] * qb[j] + kDoubled[block[j] >> 4] * qb[64 + j];
  return sum;
}

// dot(weight row, quantized row i of x), any instruction set.
inline float q8_dot(const uint8_t* row, const uint8_t* row_scales, const Q8Rows& x, int64_t i) {
  const int8_t* qi = x.q.data() + i * x.qn;
  const float* si = x.s.data() + i * x.sn;
  float acc = 0.0f;
  for (int64_t g = 0; g < x.G; ++g) {
    const int32_t sum = q8_block(row + g * 16, qi + (g / 4) * kChunk + (g % 4) * 16);
    acc += static_cast<float>(sum) * (si[g] * kScales.full[row_scales[g]]);
  }
  return acc;
}

#if defined(__AVX2__) && defined(__FMA__)
// The same with AVX2 (no VNNI), 2 blocks per step: a byte shuffle looks the nibbles up as 2v + 12,
// vpmaddubsw multiplies them with the int8 inputs into pairwise int16 sums (|sum| <= 2 * 24 * 127, so the
// even and odd halves add without overflow), vpmaddwd widens to int32, and the correction removes the 12s.
inline float q8_dot_avx2(const uint8_t* row, const uint8_t* row_scales, const Q8Rows& x, int64_t i) {
  const __m256i table = _mm256_load_si256(reinterpret_cast<const __m256i*>(kQ8Table.v));
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const int8_t* qi = x.q.data() + i * x.qn;
  const float* si = x.s.data() + i * x.sn;
  const int32_t* ci = x.corr.data() + i * x.cn;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= x.G; g += 2) {  // g % 4 is 0 or 2: both blocks lie in one chunk
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g * 16));
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, nibble));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble));
    const int8_t* qc = qi + (g / 4) * kChunk + (g % 4) * 16;
    const __m256i even = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qc)));
    const __m256i odd = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qc + 64)));
    const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci + (g / 4) * 16 + (g % 4) * 4));
    const __m256i d = _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(even, odd), ones), corr);
    const __m256 scale = _mm256_setr_m128(_mm_set1_ps(si[g] * kScales.full[row_scales[g]]),
                                          _mm_set1_ps(si[g + 1] * kScales.full[row_scales[g + 1]]));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), scale, acc);
  }
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s4 = _mm_hadd_ps(s4, s4);
  s4 = _mm_hadd_ps(s4, s4);
  float total = _mm_cvtss_f32(s4);
  for (; g < x.G; ++g)  // an odd last block
    total += static_cast<float>(q8_block(row + g * 16, qi + (g / 4) * kChunk + (g % 4) * 16)) *
             (si[g] * kScales.full[row_scales[g]]);
  return total;
}
#endif

#if defined(OSSAI_AVX512) && defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
#define OSSAI_VNNI 1

// The scales of chunk c4's 4 blocks, each over its 4 lanes, from the 16 blocks' scales of its group.
inline __m512 chunk_scales(int64_t c4, __m512 group_scales) {
  return _mm512_permutexvar_ps(_mm512_load_si512(kSpread.v[c4]), group_scales);
}

// out[j * ldo + r] = dot(row r of W, quantized row j0 + j of x) for R weight rows and M rows of x. A chunk
// of 4 blocks costs per weight row one load, one shift and two vpermb, and per (row, x row) two vpdpbusd,
// a conversion and a multiply-add with the 4 blocks' combined scales (one vpermps from a 16-block vector).
template <int64_t R, int64_t M>
inline void q8_tile_vnni(const uint8_t* rows, const uint8_t* scales, const Q8Rows& x, int64_t j0, float* out,
                         int64_t ldo) {
  const int64_t G = x.G;
  // vpermb reads an index byte's low 6 bits: a byte looks up its low nibble as it is, and its high nibble
  // after a 16-bit shift right by 4 (bits 4-5 then hold the next byte's bits, which pick among equal copies)
  const __m512i table = _mm512_load_si512(kQ8Table.v);
  __m512 acc[R][M];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 16) {
    const int64_t nb = std::min<int64_t>(16, G - g0);
    const __mmask16 smask = static_cast<__mmask16>((1u << nb) - 1);
    __m512 comb[R][M];  // block scale of W times that of x, for the group's 16 blocks
    for (int64_t r = 0; r < R; ++r) {
      const __m128i e = _mm_maskz_loadu_epi8(smask, scales + r * G + g0);
      // 2^(e-127) as float bits (e = 0, never in a real checkpoint, gives 0 instead of 2^-127)
      const __m512 ws = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(e), 23));
      for (int64_t j = 0; j < M; ++j) comb[r][j] = _mm512_mul_ps(ws, _mm512_loadu_ps(x.s.data() + (j0 + j) * x.sn + g0));
    }
    for (int64_t c4 = 0; c4 < 4 && g0 + 4 * c4 < G; ++c4) {
      const int64_t b0 = g0 + 4 * c4, chunk = b0 / 4, nbc = std::min<int64_t>(4, G - b0);
      const __mmask64 wmask = nbc == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * nbc)) - 1;
      __m512i lo[R], hi[R];
      for (int64_t r = 0; r < R; ++r) {
        const __m512i bytes = _mm512_maskz_loadu_epi8(wmask, rows + (r * G + b0) * 16);
        // one weight row at a time (decode) is one stream through the expert: fetch 4 KB ahead of it
        if (R == 1) _mm_prefetch(reinterpret_cast<const char*>(rows + b0 * 16 + 4096), _MM_HINT_T0);
        lo[r] = _mm512_permutexvar_epi8(bytes, table);
        hi[r] = _mm512_permutexvar_epi8(_mm512_srli_epi16(bytes, 4), table);
      }
      for (int64_t j = 0; j < M; ++j) {
        const int8_t* qj = x.q.data() + (j0 + j) * x.qn + chunk * kChunk;
        const __m512i qe = in_register(_mm512_loadu_si512(qj));
        const __m512i qo = in_register(_mm512_loadu_si512(qj + 64));
        const __m512i cj = in_register(_mm512_loadu_si512(x.corr.data() + (j0 + j) * x.cn + chunk * 16));
        for (int64_t r = 0; r < R; ++r) {
          const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(cj, lo[r], qe), hi[r], qo);
          acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), chunk_scales(c4, comb[r][j]), acc[r][j]);
        }
      }
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < M; ++j) out[j * ldo + r] = _mm512_reduce_add_ps(acc[r][j]);
}
// dot(weight row, quantized row i of x): q8_tile_vnni<1, 1> for decode, where one row against one token is
// the whole tile. The x operands come from hoisted pointers, whole groups of 16 blocks run without masks
// and two accumulators alternate: the general tile spent its time on index arithmetic and on its single
// multiply-add chain rather than on the products (perf of a decode MoE layer).
inline float q8_row_vnni(const uint8_t* row, const uint8_t* row_scales, const Q8Rows& x, int64_t i) {
  const int64_t G = x.G;
  const int8_t* q = x.q.data() + i * x.qn;
  const float* xs = x.s.data() + i * x.sn;
  const int32_t* corr = x.corr.data() + i * x.cn;
  const __m512i table = _mm512_load_si512(kQ8Table.v);
  __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  // 4 blocks from block b: the padding of Q8Rows (zero inputs, corrections and scales) makes the masked
  // weight bytes of a partial chunk contribute nothing
  auto chunk = [&](int64_t b, __mmask64 wmask, __m512 scale, __m512& a) {
    const __m512i bytes = _mm512_maskz_loadu_epi8(wmask, row + b * 16);
    _mm_prefetch(reinterpret_cast<const char*>(row + b * 16 + 4096), _MM_HINT_T0);  // one stream: 4 KB ahead
    const __m512i lo = _mm512_permutexvar_epi8(bytes, table);
    const __m512i hi = _mm512_permutexvar_epi8(_mm512_srli_epi16(bytes, 4), table);
    const int8_t* qc = q + b / 4 * kChunk;
    const __m512i d = _mm512_dpbusd_epi32(
        _mm512_dpbusd_epi32(_mm512_loadu_si512(corr + b / 4 * 16), lo, _mm512_loadu_si512(qc)), hi,
        _mm512_loadu_si512(qc + 64));
    a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scale, a);
  };
  auto combined = [&](int64_t g0, __mmask16 smask) {  // 2^(e-127) of the weight blocks times x's scales
    const __m128i e = _mm_maskz_loadu_epi8(smask, row_scales + g0);
    return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(e), 23)),
                         _mm512_loadu_ps(xs + g0));
  };
  int64_t g0 = 0;
  for (; g0 + 16 <= G; g0 += 16) {
    const __m512 comb = combined(g0, 0xFFFF);
    for (int c4 = 0; c4 < 4; ++c4)
      chunk(g0 + 4 * c4, ~__mmask64{0}, chunk_scales(c4, comb), acc[c4 & 1]);
  }
  if (g0 < G) {  // the last, partial group
    const __m512 comb = combined(g0, static_cast<__mmask16>((1u << (G - g0)) - 1));
    for (int c4 = 0; c4 < 4 && g0 + 4 * c4 < G; ++c4) {
      const int64_t nbc = std::min<int64_t>(4, G - g0 - 4 * c4);
      const __mmask64 wmask = nbc == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * nbc)) - 1;
      chunk(g0 + 4 * c4, wmask, chunk_scales(c4, comb), acc[c4 & 1]);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
}
#endif

// out[j * R + r] = dot(row o0 + r of W, quantized row j0 + j of x) for r < R <= 4 and j < m.
void q8_rows_product(const uint8_t* B, const uint8_t* S, int64_t o0, int64_t R, int64_t G, const Q8Rows& x,
                     int64_t j0, int64_t m, float* out) {
  const uint8_t* rows = B + o0 * G * 16;
  const uint8_t* scales = S + o0 * G;
#ifdef OSSAI_VNNI
  for (int64_t t0 = 0; t0 < m; t0 += kRowsX) {
    float* y = out + t0 * R;
    const int64_t mt = std::min(kRowsX, m - t0);
    if (R == 4 && mt > 1) {
      switch (mt) {
        case 4: q8_tile_vnni<4, 4>(rows, scales, x, j0 + t0, y, 4); break;
        case 3: q8_tile_vnni<4, 3>(rows, scales, x, j0 + t0, y, 4); break;
        default: q8_tile_vnni<4, 2>(rows, scales, x, j0 + t0, y, 4); break;  // mt == 2
      }
      continue;
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < mt; ++j) y[j * R + r] = q8_row_vnni(rows + r * G * 16, scales + r * G, x, j0 + t0 + j);
  }
#elif defined(__AVX2__) && defined(__FMA__)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < m; ++j) out[j * R + r] = q8_dot_avx2(rows + r * G * 16, scales + r * G, x, j0 + j);
#else
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < m; ++j) out[j * R + r] = q8_dot(rows + r * G * 16, scales + r * G, x, j0 + j);
#endif
}

// Element i of a bf16 or fp32 tensor's data, as float.
inline float element(const void* data, bool bf16, int64_t i) {
  return bf16 ? bf16_to_float(static_cast<const uint16_t*>(data)[i]) : static_cast<const float*>(data)[i];
}

void check_float_or_bf16(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16, name,
              " must be float32 or bfloat16");
}


#ifdef OSSAI_AVX512
// -- Attention for one query row and one kv head, head dim D = 16 * DC (AVX-512) ------------------------

// e^x, x <= 0 (softmax after subtracting the max): 2^n * e^r with |r| <= ln2/2 and a degree-7 Taylor
// polynomial, relative error ~1e-8 before rounding; below -87 the result is 0 (as expf underflows).
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(lo, x);  // this order keeps a NaN score NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts (Cody-Waite)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~tiny), p, n);
}

// Lane i of the result = the sum of r[i]'s 16 lanes: a transpose-and-add tree, 46 instructions for 16
// dot products instead of a 16-to-1 reduction (8 instructions) for each.
inline __m512 sum_lanes_16(const __m512 r[16]) {
  __m512 t[8], u[4], v[2];
  for (int k = 0; k < 8; ++k)  // halves: lanes 0-7 hold r[2k]'s partial sums, 8-15 r[2k+1]'s
    t[k] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * k], r[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(r[2 * k], r[2 * k + 1], 0xEE));
  for (int k = 0; k < 4; ++k)  // 128-bit block j holds r[4k + j]'s 4 partial sums
    u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], 0xDD));
  for (int k = 0; k < 2; ++k)
    v[k] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0xEE));
  // lane 4j + k now holds the sum of r[4k + j]
  const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), w);
}

// out[g*D : (g+1)*D] = softmax over (keys, sink) of the G query heads q[g] against the n key rows
// keys[i] (values vals[i]), for one query row and one kv head. Scratch: scores G * n floats, inv G.
template <int DC>
void attend_row_avx512(const float* q, int64_t G, const float* const* keys, const float* const* vals, int64_t n,
                       const float* sinks, float scale, float* scores, float* inv, float* out) {
  constexpr int D = 16 * DC;
  for (int64_t i0 = 0; i0 < n; i0 += 16) {  // 16 keys at a time, reused from L1 by every query head
    const int64_t m = std::min<int64_t>(16, n - i0);
    // a kv head's keys sit a pool row apart (all kv heads of a slot are contiguous), a stride the hardware
    // prefetchers follow poorly: fetch the keys two blocks ahead (8,000 keys: 3.98 -> 3.05 ms per layer)
    for (int64_t i = i0 + 32; i < std::min<int64_t>(n, i0 + 48); ++i)
      for (int c = 0; c < DC; ++c) _mm_prefetch(reinterpret_cast<const char*>(keys[i] + 16 * c), _MM_HINT_T0);
    for (int64_t g = 0; g < G; ++g) {
      __m512 qv[DC], r[16];
      for (int c = 0; c < DC; ++c) qv[c] = _mm512_loadu_ps(q + g * D + 16 * c);
      for (int64_t i = 0; i < 16; ++i) {
        r[i] = _mm512_setzero_ps();
        if (i < m)
          for (int c = 0; c < DC; ++c) r[i] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(keys[i0 + i] + 16 * c), r[i]);
      }
      _mm512_mask_storeu_ps(scores + g * n + i0, static_cast<__mmask16>((1u << m) - 1),
                            _mm512_mul_ps(sum_lanes_16(r), _mm512_set1_ps(scale)));
    }
  }
  for (int64_t g = 0; g < G; ++g) {  // softmax numerators in place; the sink has no value
    float* sg = scores + g * n;
    float mx = sinks[g];
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, sg[i]);
    const __m512 mv = _mm512_set1_ps(mx);
    __m512 total = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 k = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sg + i), mv));
      _mm512_mask_storeu_ps(sg + i, k, e);
      total = _mm512_add_ps(total, _mm512_maskz_mov_ps(k, e));
    }
    inv[g] = 1.0f / (_mm512_reduce_add_ps(total) + std::exp(sinks[g] - mx));
  }
  for (int64_t g0 = 0; g0 < G; g0 += 4) {  // 4 query heads' accumulators (4 * DC registers) per pass
    const int64_t gn = std::min<int64_t>(4, G - g0);
    __m512 acc[4][DC];
    for (int64_t g = 0; g < 4; ++g)
      for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      if (i + 16 < n)  // values, likewise strided
        for (int c = 0; c < DC; ++c) _mm_prefetch(reinterpret_cast<const char*>(vals[i + 16] + 16 * c), _MM_HINT_T0);
      __m512 v[DC];
      for (int c = 0; c < DC; ++c) v[c] = _mm512_loadu_ps(vals[i] + 16 * c);
      for (int64_t g = 0; g < gn; ++g) {
        const __m512 p = _mm512_set1_ps(scores[(g0 + g) * n + i]);
        for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_fmadd_ps(p, v[c], acc[g][c]);
      }
    }
    for (int64_t g = 0; g < gn; ++g)
      for (int c = 0; c < DC; ++c)
        _mm512_storeu_ps(out + (g0 + g) * D + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv[g0 + g])));
  }
}
#endif

}  // namespace

// The whole mixture-of-experts block but its norm and residual, in four parallel regions: router logits;
// every active expert's mlp1 with its bias and the clamped SwiGLU; mlp2 with its bias; each token's
// weighted sum. Tokens are grouped by expert, so each selected expert's packed weights are read once per
// call for all its tokens, and a work item is a tile of 4 weight rows of one expert. With int8, the experts'
// inputs (x and the SwiGLU output) are rounded to int8 per 32 values first (the Q8Rows section).
// Reference: MLPBlock.route + MLPBlock.experts in ossai/model/transformer.py.
torch::Tensor moe(torch::Tensor x, torch::Tensor gate_weight, torch::Tensor gate_bias, int64_t top_k,
                  torch::Tensor w1_blocks, torch::Tensor w1_scales, torch::Tensor b1, torch::Tensor w2_blocks,
                  torch::Tensor w2_scales, torch::Tensor b2, double limit, double alpha, bool int8) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [n, H]");
  const int64_t n = x.size(0), H = x.size(1), E = gate_weight.size(0);
  TORCH_CHECK(gate_weight.dim() == 2 && gate_weight.size(1) == H, "gate_weight must be [E, H]");
  TORCH_CHECK(gate_bias.numel() == E, "gate_bias must have E values");
  TORCH_CHECK(top_k >= 1 && top_k <= E, "top_k must be in [1, E]");
  TORCH_CHECK(w1_blocks.dim() == 4 && w1_blocks.size(0) == E && w1_blocks.size(2) * 32 == H &&
                  w1_blocks.size(3) == 16 && w1_blocks.scalar_type() == torch::kUInt8 && w1_blocks.is_contiguous(),
              "w1_blocks must be contiguous uint8 [E, 2I, H/32, 16]");
  const int64_t I2 = w1_blocks.size(1), I = I2 / 2, G1 = H / 32;
  TORCH_CHECK(I2 % 2 == 0 && I % 32 == 0, "mlp1 must have 2I rows with I a multiple of 32");
  TORCH_CHECK(w2_blocks.dim() == 4 && w2_blocks.size(0) == E && w2_blocks.size(1) == H &&
                  w2_blocks.size(2) * 32 == I && w2_blocks.size(3) == 16 &&
                  w2_blocks.scalar_type() == torch::kUInt8 && w2_blocks.is_contiguous(),
              "w2_blocks must be contiguous uint8 [E, H, I/32, 16]");
  const int64_t G2 = I / 32;
  TORCH_CHECK(w1_scales.scalar_type() == torch::kUInt8 && w1_scales.is_contiguous() &&
                  w1_scales.numel() == E * I2 * G1, "w1_scales must be contiguous uint8 [E, 2I, H/32]");
  TORCH_CHECK(w2_scales.scalar_type() == torch::kUInt8 && w2_scales.is_contiguous() &&
                  w2_scales.numel() == E * H * G2, "w2_scales must be contiguous uint8 [E, H, I/32]");
  TORCH_CHECK(b1.numel() == E * I2 && b2.numel() == E * H, "b1 must be [E, 2I] and b2 [E, H]");
  // the router and biases are small: a strided one is copied (a no-op for the checkpoint's own tensors)
  gate_weight = gate_weight.contiguous();
  gate_bias = gate_bias.contiguous();
  b1 = b1.contiguous();
  b2 = b2.contiguous();
  for (auto* t : {&gate_weight, &gate_bias, &b1, &b2}) check_float_or_bf16(*t, "the router and biases");
  auto xc = x.contiguous();
  const float* X = xc.data_ptr<float>();
  auto out = torch::zeros({n, H}, x.options());
  if (n == 0) return out;
  float* Y = out.data_ptr<float>();

  // 1. Router: logits [n, E], then each row's top_k (largest first) and the softmax over them.
  std::vector<float> logits(n * E);
  const bool gw16 = gate_weight.scalar_type() == torch::kBFloat16;
  const void* GW = gate_weight.data_ptr();
  // a decode step's router is ~0.1 M multiply-adds: cheaper inline than as a parallel region
  const int64_t router_grain = n * E * H <= (int64_t{1} << 20) ? E : 4;
  at::parallel_for(0, E, router_grain, [&](int64_t e0, int64_t e1) {
    std::vector<float> w(H);
    for (int64_t e = e0; e < e1; ++e) {
      for (int64_t k = 0; k < H; ++k) w[k] = element(GW, gw16, e * H + k);
      const float b = element(gate_bias.data_ptr(), gate_bias.scalar_type() == torch::kBFloat16, e);
      for (int64_t t = 0; t < n; ++t) {
        const float* xr = X + t * H;
        float d = 0.0f;
#pragma omp simd reduction(+ : d)
        for (int64_t k = 0; k < H; ++k) d += w[k] * xr[k];
        logits[t * E + e] = d + b;
      }
    }
  });
  std::vector<int64_t> chosen(n * top_k);
  std::vector<float> gate(n * top_k);
  std::vector<int64_t> order(E);
  for (int64_t t = 0; t < n; ++t) {
    const float* l = logits.data() + t * E;
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                      [&](int64_t a, int64_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    float total = 0.0f;
    for (int64_t a = 0; a < top_k; ++a) {
      chosen[t * top_k + a] = order[a];
      gate[t * top_k + a] = std::exp(l[order[a]] - l[order[0]]);
      total += gate[t * top_k + a];
    }
    for (int64_t a = 0; a < top_k; ++a) gate[t * top_k + a] /= total;
  }

  // Group the (token, weight) pairs by expert: slots [start[k], start[k+1]) belong to active[k].
  std::vector<int64_t> count(E, 0);
  for (int64_t e : chosen) ++count[e];
  std::vector<int64_t> active, start{0};
  std::vector<int64_t> first(E, 0);
  for (int64_t e = 0; e < E; ++e) {
    if (!count[e]) continue;
    first[e] = start.back();
    active.push_back(e);
    start.push_back(start.back() + count[e]);
  }
  const int64_t slots = start.back();
  std::vector<int64_t> slot_token(slots), slot_rank(slots);
  std::vector<float> slot_weight(slots);
  // each slot's row of x, laid out for the product: fp32, or rounded to int8 once per token
  std::vector<float> xin(int8 ? 0 : slots * H);
  Q8Rows qin(G1, int8 ? slots : 0), qtok(G1, int8 ? n : 0);
  if (int8) at::parallel_for(0, n, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) qtok.quantize(t, X + t * H);
  });
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t a = 0; a < top_k; ++a) {
      const int64_t s = first[chosen[t * top_k + a]]++;
      slot_token[s] = t;
      slot_rank[s] = a;
      slot_weight[s] = gate[t * top_k + a];
      if (int8) {
        qin.copy_row(s, qtok, t);
      } else {
        for (int64_t k = 0; k < H; ++k) xin[s * H + x_slot(k)] = X[t * H + k];
      }
    }
  }
  const bool b1_16 = b1.scalar_type() == torch::kBFloat16, b2_16 = b2.scalar_type() == torch::kBFloat16;
  const void* B1 = b1.data_ptr();
  const void* B2 = b2.data_ptr();
  const uint8_t* W1 = w1_blocks.data_ptr<uint8_t>();
  const uint8_t* S1 = w1_scales.data_ptr<uint8_t>();
  const uint8_t* W2 = w2_blocks.data_ptr<uint8_t>();
  const uint8_t* S2 = w2_scales.data_ptr<uint8_t>();
  const float lim = static_cast<float>(limit), alf = static_cast<float>(alpha);

  // the tile products of one expert matrix (W, S: all experts' [E, rows, G, 16] / [E, rows, G]) against
  // the slots' rows, fp32 (X laid out by x_slot) or int8 (Q)
  auto product = [int8](const uint8_t* W, const uint8_t* S, int64_t rows, int64_t G, const float* X,
                        const Q8Rows& Q) {
    return [=, &Q](int64_t e, int64_t o0, int64_t R, int64_t s0, int64_t m, float* tile, float* scratch) {
      if (int8) {
        q8_rows_product(W + e * rows * G * 16, S + e * rows * G, o0, R, G, Q, s0, m, tile);
      } else {
        rows_product(W + e * rows * G * 16, S + e * rows * G, o0, R, G, X + s0 * G * 32, m, tile, scratch);
      }
    };
  };
  const int64_t scratch1 = int8 ? 0 : scratch_floats(slots, H), scratch2 = int8 ? 0 : scratch_floats(slots, I);

  // 2. mlp1 + bias + SwiGLU into act [slots, I], 4 weight rows (2 gate/linear pairs) per work item.
  std::vector<float> act(slots * I);
  expert_tiles(I2, active, start, scratch1, product(W1, S1, I2, G1, xin.data(), qin),
               [&](int64_t k, int64_t e, int64_t o0, int64_t R, int64_t m, const float* tile) {
    for (int64_t j = 0; j < m; ++j) {
      for (int64_t r = 0; r < R; r += 2) {
        float glu = tile[j * R + r] + element(B1, b1_16, e * I2 + o0 + r);
        float lin = tile[j * R + r + 1] + element(B1, b1_16, e * I2 + o0 + r + 1);
        glu = std::min(glu, lim);
        lin = std::min(std::max(lin, -lim), lim);
        const int64_t col = int8 ? (o0 + r) / 2 : x_slot((o0 + r) / 2);  // Q8Rows has its own layout
        act[(start[k] + j) * I + col] = glu / (1.0f + std::exp(-alf * glu)) * (lin + 1.0f);
      }
    }
  });
  Q8Rows qact(G2, int8 ? slots : 0);
  if (int8) at::parallel_for(0, slots, 8, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) qact.quantize(s, act.data() + s * I);
  });

  // 3. mlp2 + bias into y [slots, H].
  std::vector<float> y(slots * H);
  expert_tiles(H, active, start, scratch2, product(W2, S2, H, G2, act.data(), qact),
               [&](int64_t k, int64_t e, int64_t o0, int64_t R, int64_t m, const float* tile) {
    for (int64_t j = 0; j < m; ++j)
      for (int64_t r = 0; r < R; ++r)
        y[(start[k] + j) * H + o0 + r] = tile[j * R + r] + element(B2, b2_16, e * H + o0 + r);
  });

  // 4. Each token's weighted sum over its experts.
  std::vector<int64_t> slot_of(n * top_k);
  for (int64_t s = 0; s < slots; ++s) slot_of[slot_token[s] * top_k + slot_rank[s]] = s;
  at::parallel_for(0, n, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* out_row = Y + t * H;
      for (int64_t a = 0; a < top_k; ++a) {
        const int64_t s = slot_of[t * top_k + a];
        const float wgt = slot_weight[s];
        const float* yr = y.data() + s * H;
#pragma omp simd
        for (int64_t c = 0; c < H; ++c) out_row[c] += wgt * yr[c];
      }
    }
  });
  return out;
}

torch::Tensor mxfp4_linear(torch::Tensor x, torch::Tensor blocks, torch::Tensor scales,
                           c10::optional<torch::Tensor> bias, bool int8) {
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

  if (int8) {  // x rounded to int8 per block, the MoE's int8 product (tested on its own through here)
    Q8Rows q(G, n);
    for (int64_t t = 0; t < n; ++t) q.quantize(t, X + t * K);
    at::parallel_for(0, (O + 3) / 4, 2, [&](int64_t tile_begin, int64_t tile_end) {
      std::vector<float> tile(4 * n);
      for (int64_t tile_i = tile_begin; tile_i < tile_end; ++tile_i) {
        const int64_t o0 = tile_i * 4, R = std::min<int64_t>(4, O - o0);
        q8_rows_product(B, S, o0, R, G, q, 0, n, tile.data());
        for (int64_t t = 0; t < n; ++t)
          for (int64_t r = 0; r < R; ++r) Y[t * O + o0 + r] = tile[t * R + r];
      }
    });
    add_bias(Y, bias_ptr, n, O);
    return out;
  }

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
  // 8 weight rows per work item: one activation row (decode) then keeps 8 row streams in flight per
  // thread, which measured ~10% faster than 4 (BENCHMARKS.md); more rows of x use two 4-row
  // weight tiles, each against up to 6 rows of x at a time.
  constexpr int64_t kRowsB = 8;
  parallel_shares((O + kRowsB - 1) / kRowsB, 4, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t o0 = tile * kRowsB;
      if (o0 + kRowsB <= O) {
        if (n == 1) {
          for (int64_t o = o0; o < o0 + kRowsB; ++o) Y[o] = bf16_row_avx512(W + o * K, K, X);
        } else {
          bf16_rows_avx512<kRowsW>(W, o0, K, X, n, Y, O);
          bf16_rows_avx512<kRowsW>(W, o0 + kRowsW, K, X, n, Y, O);
        }
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

// Attention of a step's query rows over keys gathered from a paged pool, with learned sinks and an optional
// sliding window: every sequence and kv head in one parallel region, keys read straight from their pool
// slots (no gathered copy). Sequence b owns query rows [row_start[b], row_start[b+1]) and candidate keys
// key_slots/key_pos[key_start[b] : key_start[b+1]]; query row t sees key j iff key_pos[j] <= q_pos[t] and
// q_pos[t] - key_pos[j] < window (window 0: no window). Reference: ossai.model.layers.attention.
torch::Tensor paged_attention(torch::Tensor q, torch::Tensor k_pool, torch::Tensor v_pool, torch::Tensor sinks,
                              torch::Tensor q_pos, torch::Tensor row_start, torch::Tensor key_slots,
                              torch::Tensor key_pos, torch::Tensor key_start, int64_t window, double sm_scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32, "q must be float32 [N, heads, D]");
  TORCH_CHECK(k_pool.dim() == 3 && k_pool.scalar_type() == torch::kFloat32 && k_pool.is_contiguous() &&
                  v_pool.sizes() == k_pool.sizes() && v_pool.scalar_type() == torch::kFloat32 &&
                  v_pool.is_contiguous(),
              "k_pool and v_pool must be contiguous float32 [slots, kv_heads, D]");
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2), K = k_pool.size(1), slots = k_pool.size(0);
  TORCH_CHECK(k_pool.size(2) == D && Hq % K == 0, "q and the pools disagree on heads or head dim");
  TORCH_CHECK(sinks.numel() == Hq, "sinks must have one value per query head");
  for (auto* t : {&q_pos, &row_start, &key_slots, &key_pos, &key_start})
    TORCH_CHECK(t->scalar_type() == torch::kInt64 && t->is_contiguous() && t->dim() == 1,
                "positions, slots and offsets must be contiguous int64 vectors");
  const int64_t B = row_start.numel() - 1;
  TORCH_CHECK(B >= 0 && key_start.numel() == B + 1 && q_pos.numel() == N, "offsets do not match");
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const int64_t* ks = key_start.data_ptr<int64_t>();
  const int64_t* slot = key_slots.data_ptr<int64_t>();
  const int64_t* kpos = key_pos.data_ptr<int64_t>();
  const int64_t* qpos = q_pos.data_ptr<int64_t>();
  TORCH_CHECK(rs[0] == 0 && rs[B] == N && ks[0] == 0 && ks[B] == key_slots.numel() &&
                  key_pos.numel() == key_slots.numel(), "offsets do not match");
  for (int64_t j = 0; j < key_slots.numel(); ++j)
    TORCH_CHECK(slot[j] >= 0 && slot[j] < slots, "key slot ", slot[j], " is outside the pool");
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(rs[b] <= rs[b + 1] && ks[b] <= ks[b + 1], "offsets must not decrease");
  std::vector<int64_t> seq_of_row(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = rs[b]; t < rs[b + 1]; ++t) seq_of_row[t] = b;
  auto qc = q.contiguous();
  const torch::Tensor sk = sinks.to(torch::kFloat32).contiguous();
  auto out = torch::empty({N, Hq * D}, q.options());
  const float* Q = qc.data_ptr<float>();
  const float* Kp = k_pool.data_ptr<float>();
  const float* Vp = v_pool.data_ptr<float>();
  const float* S = sk.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const int64_t G = Hq / K;
  const float scale = static_cast<float>(sm_scale);

  at::parallel_for(0, N * K, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> scores, acc(G * D);
    std::vector<int64_t> visible;
    std::vector<const float*> keys, vals;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t t = w / K, h = w % K, b = seq_of_row[t], p = qpos[t];
      visible.clear();
      for (int64_t j = ks[b]; j < ks[b + 1]; ++j)
        if (kpos[j] <= p && (window <= 0 || p - kpos[j] < window)) visible.push_back(slot[j]);
      const int64_t n = static_cast<int64_t>(visible.size());
      scores.resize(G * n);
#ifdef OSSAI_AVX512
      if (D == 64) {  // gpt-oss's head dim
        keys.resize(n);
        vals.resize(n);
        for (int64_t i = 0; i < n; ++i) {
          keys[i] = Kp + (visible[i] * K + h) * D;
          vals[i] = Vp + (visible[i] * K + h) * D;
        }
        attend_row_avx512<4>(Q + (t * Hq + h * G) * D, G, keys.data(), vals.data(), n, S + h * G, scale,
                             scores.data(), acc.data() /* G floats of it */, O + t * Hq * D + h * G * D);
        continue;
      }
#endif
      for (int64_t i = 0; i < n; ++i) {
        const float* kr = Kp + (visible[i] * K + h) * D;
        for (int64_t g = 0; g < G; ++g) {
          const float* qr = Q + (t * Hq + h * G + g) * D;
          float d = 0.0f;
#pragma omp simd reduction(+ : d)
          for (int64_t c = 0; c < D; ++c) d += qr[c] * kr[c];
          scores[g * n + i] = d * scale;
        }
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t g = 0; g < G; ++g) {  // softmax over the visible keys and the sink, which has no value
        float* sg = scores.data() + g * n;
        const float sink = S[h * G + g];
        float m = sink;
        for (int64_t i = 0; i < n; ++i) m = std::max(m, sg[i]);
        float total = std::exp(sink - m);
        for (int64_t i = 0; i < n; ++i) {
          sg[i] = std::exp(sg[i] - m);
          total += sg[i];
        }
        const float inv = 1.0f / total;
        float* ag = acc.data() + g * D;
        for (int64_t i = 0; i < n; ++i) {
          const float pi = sg[i] * inv;
          const float* vr = Vp + (visible[i] * K + h) * D;
#pragma omp simd
          for (int64_t c = 0; c < D; ++c) ag[c] += pi * vr[c];
        }
      }
      for (int64_t g = 0; g < G; ++g) std::copy_n(acc.data() + g * D, D, O + t * Hq * D + (h * G + g) * D);
    }
  });
  return out;
}

// t * rsqrt(mean(t^2) + eps) * scale per row, for fp32 rows and a bf16 or fp32 scale: one call instead of
// the reference's eight ops, which cost more than the arithmetic for a decode step's single row.
// Reference: layers.rms_norm.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor scale, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [n, H]");
  const int64_t n = x.size(0), H = x.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == H, "scale must be [H]");
  check_float_or_bf16(scale, "scale");
  auto xc = x.contiguous();
  auto sc = scale.contiguous();
  auto out = torch::empty_like(xc);
  const float* X = xc.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  const bool bf16 = sc.scalar_type() == torch::kBFloat16;
  const uint16_t* g16 = bf16 ? reinterpret_cast<const uint16_t*>(sc.data_ptr()) : nullptr;
  const float* g32 = bf16 ? nullptr : sc.data_ptr<float>();
  auto row = [&](int64_t r) {
    const float* xr = X + r * H;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < H; ++c) ss += xr[c] * xr[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + e);
    float* yr = Y + r * H;
    if (bf16) {
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) yr[c] = xr[c] * inv * bf16_to_float(g16[c]);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) yr[c] = xr[c] * inv * g32[c];
    }
  };
  if (n == 1) {  // a decode step: no parallel region
    row(0);
  } else {
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) row(r);
    });
  }
  return out;
}

// YaRN rotary embedding of x [T, heads, D] (half-split layout) at `positions`, from the tables cos, sin
// [P, D/2] (concentration folded in), in one call. Reference: layers.Rotary.__call__.
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32, "x must be float32 [T, heads, D]");
  const int64_t T = x.size(0), Hh = x.size(1), D = x.size(2), half = D / 2;
  TORCH_CHECK(D % 2 == 0 && cos.dim() == 2 && cos.size(1) == half && sin.sizes() == cos.sizes() &&
                  cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32,
              "cos and sin must be float32 [positions, D/2]");
  TORCH_CHECK(positions.scalar_type() == torch::kInt64 && positions.numel() == T, "positions must be int64 [T]");
  auto xc = x.contiguous();
  auto cc = cos.contiguous();
  auto sn = sin.contiguous();
  auto pc = positions.contiguous();
  const int64_t* P = pc.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(P[t] >= 0 && P[t] < cc.size(0), "position ", P[t], " is outside the rotary table");
  auto out = torch::empty_like(xc);
  const float* X = xc.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* c = cc.data_ptr<float>() + P[t] * half;
      const float* s = sn.data_ptr<float>() + P[t] * half;
      for (int64_t h = 0; h < Hh; ++h) {
        const float* x1 = X + (t * Hh + h) * D;
        const float* x2 = x1 + half;
        float* y1 = Y + (t * Hh + h) * D;
        float* y2 = y1 + half;
        for (int64_t i = 0; i < half; ++i) {
          y1[i] = x1[i] * c[i] - x2[i] * s[i];
          y2[i] = x2[i] * c[i] + x1[i] * s[i];
        }
      }
    }
  });
  return out;
}

// -- Whole decoder blocks for few rows (decode): the kernels above in one call from Python ------------------
// The same calls in the same order as the model's block forward with these kernels installed, so the result
// is identical; what goes is ~15 Python-level ops per layer, each dearer than its arithmetic at decode (run
// after kernels that streamed gigabytes through the caches: they took ~4.5 of a 20b step's ~12 ms of glue).

// x + out(attention(rope(q), rope(k), v)) with q, k, v = split(qkv(rms_norm(x))), this step's k and v stored
// at write_slots of the pools first. Reference: AttentionBlock.forward with BatchMeta.attend's kernel path.
torch::Tensor attention_block(torch::Tensor x, torch::Tensor norm_scale, double eps, torch::Tensor qkv_weight,
                              torch::Tensor qkv_bias, int64_t heads, int64_t kv_heads, torch::Tensor out_weight,
                              torch::Tensor out_bias, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                              torch::Tensor k_pool, torch::Tensor v_pool, torch::Tensor write_slots,
                              torch::Tensor sinks, torch::Tensor row_start, torch::Tensor key_slots,
                              torch::Tensor key_pos, torch::Tensor key_start, int64_t window, double sm_scale) {
  const int64_t n = x.size(0), D = k_pool.size(2);
  TORCH_CHECK(qkv_weight.size(0) == (heads + 2 * kv_heads) * D, "qkv_weight must have (heads + 2 kv_heads) * D rows");
  TORCH_CHECK(write_slots.numel() == n, "write_slots must have one slot per row");
  const torch::Tensor qkv = bf16_linear(rms_norm(x, norm_scale, eps), qkv_weight, qkv_bias);
  const torch::Tensor q = rope(qkv.narrow(1, 0, heads * D).reshape({n, heads, D}), cos, sin, positions);
  const torch::Tensor k = rope(qkv.narrow(1, heads * D, kv_heads * D).reshape({n, kv_heads, D}), cos, sin, positions);
  k_pool.index_put_({write_slots}, k);
  v_pool.index_put_({write_slots}, qkv.narrow(1, (heads + kv_heads) * D, kv_heads * D).reshape({n, kv_heads, D}));
  const torch::Tensor a = paged_attention(q, k_pool, v_pool, sinks, positions, row_start, key_slots, key_pos,
                                          key_start, window, sm_scale);
  return x + bf16_linear(a, out_weight, out_bias);
}

// x + moe(rms_norm(x)). Reference: MLPBlock.forward with the fused mix.
torch::Tensor mlp_block(torch::Tensor x, torch::Tensor norm_scale, double eps, torch::Tensor gate_weight,
                        torch::Tensor gate_bias, int64_t top_k, torch::Tensor w1_blocks, torch::Tensor w1_scales,
                        torch::Tensor b1, torch::Tensor w2_blocks, torch::Tensor w2_scales, torch::Tensor b2,
                        double limit, double alpha, bool int8) {
  return x + moe(rms_norm(x, norm_scale, eps), gate_weight, gate_bias, top_k, w1_blocks, w1_scales, b1, w2_blocks,
                 w2_scales, b2, limit, alpha, int8);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#if defined(OSSAI_VNNI)
  m.attr("int8_path") = "avx512-vnni";
#elif defined(__AVX2__) && defined(__FMA__)
  m.attr("int8_path") = "avx2";
#else
  m.attr("int8_path") = "portable";  // scalar: slower than the exact path
#endif
  // rows of x up to which bf16_linear beats upcasting the weight and a torch GEMM (0: any number);
  // the AVX-512 tiles run at ~100 GFMA/s on 2 cores, the compiler-vectorized loop does not
#if defined(OSSAI_AVX512)
  m.attr("bf16_max_rows") = 0;
#else
  m.attr("bf16_max_rows") = 32;
#endif
  // the GIL is released: the server's event loop keeps serving while a step runs
  m.def("bf16_linear", &bf16_linear, "y = x @ W^T + b for bf16 W, fp32 x (fp32 accumulation)", py::arg("x"),
        py::arg("weight"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("mxfp4_linear", &mxfp4_linear, "y = x @ dequant(mxfp4 W)^T + b, fused (fp32; int8: x rounded to int8)",
        py::arg("x"), py::arg("blocks"), py::arg("scales"), py::arg("bias") = py::none(), py::arg("int8") = false,
        py::call_guard<py::gil_scoped_release>());
  m.def("moe", &moe, "the mixture-of-experts block (router, experts, SwiGLU, weighted sum) without norm or residual",
        py::arg("x"), py::arg("gate_weight"), py::arg("gate_bias"), py::arg("top_k"), py::arg("w1_blocks"),
        py::arg("w1_scales"), py::arg("b1"), py::arg("w2_blocks"), py::arg("w2_scales"), py::arg("b2"),
        py::arg("limit"), py::arg("alpha"), py::arg("int8") = false, py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm", &rms_norm, "t * rsqrt(mean(t^2) + eps) * scale per row (fp32)", py::arg("x"),
        py::arg("scale"), py::arg("eps"), py::call_guard<py::gil_scoped_release>());
  m.def("rope", &rope, "rotary embedding from cos/sin tables at the given positions (fp32)", py::arg("x"),
        py::arg("cos"), py::arg("sin"), py::arg("positions"), py::call_guard<py::gil_scoped_release>());
  m.def("attention_block", &attention_block, "a whole attention block over the paged pools (decode)",
        py::call_guard<py::gil_scoped_release>());
  m.def("mlp_block", &mlp_block, "x + moe(rms_norm(x)) in one call (decode)", py::call_guard<py::gil_scoped_release>());
  m.def("paged_attention", &paged_attention, "attention with sinks and a sliding window over a paged KV pool",
        py::arg("q"), py::arg("k_pool"), py::arg("v_pool"), py::arg("sinks"), py::arg("q_pos"),
        py::arg("row_start"), py::arg("key_slots"), py::arg("key_pos"), py::arg("key_start"), py::arg("window"),
        py::arg("sm_scale"), py::call_guard<py::gil_scoped_release>());
}
