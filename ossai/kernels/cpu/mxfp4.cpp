// Fused MXFP4 matrix product for CPU: y = x @ dequant(W)^T + b, reading W in its packed form.
//
// W is [O, G, 16] bytes of E2M1 nibbles (low nibble = even element) with one E8M0 scale per 32 values.
// Each block is unpacked to 32 floats in registers/L1 once and used for every row of x, so the packed
// weights are read once per call and a dequantized matrix never exists. Accumulation is fp32.
// Reference: ossai/model/mxfp4.py (dequantize) + torch.nn.functional.linear.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
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
  torch::Tensor bf;
  if (bias.has_value()) {
    bf = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(bf.numel() == O, "bias must have ", O, " values");
  }
  auto out = torch::empty({n, O}, x.options());
  const float* X = xc.data_ptr<float>();
  const uint8_t* B = bc.data_ptr<uint8_t>();
  const uint8_t* S = sc.data_ptr<uint8_t>();
  const float* bias_ptr = bias.has_value() ? bf.data_ptr<float>() : nullptr;
  float* Y = out.data_ptr<float>();

  at::parallel_for(0, O, 8, [&](int64_t o_begin, int64_t o_end) {
    std::vector<float> acc(n);
    alignas(64) float w[32];
    for (int64_t o = o_begin; o < o_end; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      const uint8_t* row = B + o * G * 16;
      const uint8_t* row_scales = S + o * G;
      for (int64_t g = 0; g < G; ++g) {
        const uint8_t* block = row + g * 16;
        for (int j = 0; j < 16; ++j) {
          w[2 * j] = kPairs.v[block[j]][0];
          w[2 * j + 1] = kPairs.v[block[j]][1];
        }
        const float scale = std::ldexp(1.0f, static_cast<int>(row_scales[g]) - 127);
        for (int64_t t = 0; t < n; ++t) {
          const float* xr = X + t * K + g * 32;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int k = 0; k < 32; ++k) dot += w[k] * xr[k];
          acc[t] += dot * scale;
        }
      }
      for (int64_t t = 0; t < n; ++t) Y[t * O + o] = acc[t] + (bias_ptr ? bias_ptr[o] : 0.0f);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mxfp4_linear", &mxfp4_linear, "y = x @ dequant(mxfp4 W)^T + b, fused (fp32)", py::arg("x"),
        py::arg("blocks"), py::arg("scales"), py::arg("bias") = py::none());
}
