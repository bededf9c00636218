"""The CPU extension against its plain-torch references (ossai.model), and the swap into the engine."""

from __future__ import annotations

import pytest
import torch

from ossai.engine import Engine, SamplingParams
from ossai.kernels import cpu
from ossai.model import layers, transformer


@pytest.fixture(scope="module", params=list(cpu.ISA_FLAGS))
def kernels(request):
    """The extension built for each instruction-set path (AVX-512, AVX2, portable C++), so every path is
    checked here whatever CPU a user has. make test installs a compiler and ninja: building must work."""
    return cpu.load(required=True, isa=request.param)


@pytest.mark.parametrize(
    ("rows", "out_features", "in_features"),
    [(1, 64, 64), (7, 96, 128), (16, 5760, 2880), (3, 33, 32), (9, 35, 64)],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_mxfp4_linear_matches_reference(kernels, rows, out_features, in_features, with_bias):
    g = torch.Generator().manual_seed(rows * out_features)
    blocks = torch.randint(0, 256, (out_features, in_features // 32, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(110, 135, (out_features, in_features // 32), dtype=torch.uint8, generator=g)
    bias = torch.randn(out_features, generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, in_features, generator=g)
    ref = transformer.mxfp4_linear(x, blocks, scales, bias)
    got = kernels.mxfp4_linear(x, blocks, scales, bias)
    assert got.shape == ref.shape
    # same products, fp32 sums in another order
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_mxfp4_linear_takes_strided_rows_and_rejects_bad_shapes(kernels):
    blocks = torch.randint(0, 256, (8, 2, 16), dtype=torch.uint8)
    scales = torch.full((8, 2), 127, dtype=torch.uint8)
    x = torch.randn(64, 5)[:, ::1].t().contiguous()[:, :64]  # [5, 64]
    x = torch.cat([x, x], dim=1)[:, ::2]  # non-contiguous view [5, 64]
    assert torch.allclose(
        kernels.mxfp4_linear(x, blocks, scales, None),
        transformer.mxfp4_linear(x, blocks, scales, None),
        atol=1e-5,
    )
    with pytest.raises(RuntimeError, match="columns"):
        kernels.mxfp4_linear(torch.randn(2, 32), blocks, scales, None)
    with pytest.raises(RuntimeError, match="float32"):
        kernels.mxfp4_linear(torch.randn(2, 64).bfloat16(), blocks, scales, None)


def test_engine_uses_the_kernel_and_greedy_output_is_unchanged(tiny):
    assert cpu.load(required=True) is not None
    engine = Engine.load(tiny)
    experts = engine.model.mlp[0].mxfp4_linear
    assert experts is not transformer.mxfp4_linear and all(
        m.mxfp4_linear is experts for m in engine.model.mlp
    )
    assert engine.model.dense is not layers.linear and all(
        a.dense is engine.model.dense for a in engine.model.attn
    )
    prompt = list(range(1000, 1100))
    params = SamplingParams(max_tokens=64, temperature=0.0)
    fast = list(engine.generate(prompt, params))
    for m in engine.model.mlp:
        m.mxfp4_linear, m.dense = transformer.mxfp4_linear, layers.linear  # back to the reference
    for module in [*engine.model.attn, engine.model]:
        module.dense = layers.linear
    reference = list(engine.generate(prompt, params))
    engine.close()
    assert fast == reference


@pytest.mark.parametrize(
    ("rows", "out_features", "in_features"),
    [(1, 7, 64), (5, 300, 1000), (16, 2048, 2880), (9, 301, 40), (2, 5, 8)],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_linear_matches_reference(kernels, rows, out_features, in_features, with_bias):
    g = torch.Generator().manual_seed(rows + out_features)
    weight = torch.randn(out_features, in_features, generator=g).bfloat16()
    bias = torch.randn(out_features, generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, in_features, generator=g)
    ref = layers.linear(x, weight, bias)
    got = kernels.bf16_linear(x, weight, bias)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.bf16_linear(x, weight.t(), None)
