"""The MXFP4 decoder against values computed by hand from the OCP MX spec."""

import pytest
import torch

from ossai.model import mxfp4


def _block(pairs: list[tuple[int, int]]) -> torch.Tensor:
    """16 bytes from (low nibble, high nibble) pairs; unspecified bytes are zero."""
    data = [lo | (hi << 4) for lo, hi in pairs] + [0] * (16 - len(pairs))
    return torch.tensor([[data]], dtype=torch.uint8)  # [rows=1, blocks=1, 16]


def test_nibble_order_sign_and_scale_bias():
    # byte 0 = 0x21: low nibble 1 (+0.5) is element 0, high nibble 2 (+1.0) is element 1
    # byte 1 = 0xF7: low 7 (+6.0) is element 2, high 0xF (-6.0, sign bit 3) is element 3
    # byte 2 = 0x98: low 8 (-0.0), high 9 (-0.5)
    blocks = _block([(1, 2), (7, 15), (8, 9)])
    unit = mxfp4.dequantize(blocks, torch.tensor([[127]], dtype=torch.uint8))  # 2^(127-127) = 1
    assert unit[0, :6].tolist() == [0.5, 1.0, 6.0, -6.0, -0.0, -0.5]
    assert torch.signbit(unit[0, 4])  # negative zero survives
    assert unit[0, 6:].abs().sum() == 0

    scaled = mxfp4.dequantize(blocks, torch.tensor([[130]], dtype=torch.uint8))  # 2^3
    assert scaled[0, :4].tolist() == [4.0, 8.0, 48.0, -48.0]
    tiny = mxfp4.dequantize(blocks, torch.tensor([[120]], dtype=torch.uint8))  # 2^-7
    assert tiny[0, 2].item() == 6.0 / 128


def test_full_lut_and_shapes():
    # element 2j = code j, element 2j+1 = code j+8 (the negative twin)
    blocks = _block([(j, j + 8) for j in range(8)])
    values = mxfp4.dequantize(
        blocks.view(1, 1, 16).expand(3, 2, 16), torch.full((3, 2), 128, dtype=torch.uint8)
    )
    assert values.shape == (3, 64)
    expected = []
    for j in range(8):
        expected += [2 * mxfp4.FP4_VALUES[j], 2 * mxfp4.FP4_VALUES[j + 8]]
    assert values[0, :16].tolist() == expected
    assert values[0, 32:48].tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_is_exact_in_bf16_and_fp32(dtype):
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (5, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (5, 4), dtype=torch.uint8, generator=g)
    out = mxfp4.dequantize(blocks, scales, dtype)
    assert out.dtype == dtype
    ref = mxfp4.dequantize(blocks, scales, torch.float64)
    assert torch.equal(out.double(), ref)


def test_quantize_round_trips_representable_values():
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (6, 3, 16), dtype=torch.uint8, generator=g)
    # keep a +-6 in each block so the chosen scale is the original one
    blocks[..., 0] = 0x77
    scales = torch.randint(110, 130, (6, 3), dtype=torch.uint8, generator=g)
    values = mxfp4.dequantize(blocks, scales)
    b2, s2 = mxfp4.quantize(values)
    assert torch.equal(mxfp4.dequantize(b2, s2), values)


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="shapes"):
        mxfp4.dequantize(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TypeError):
        mxfp4.dequantize(torch.zeros(2, 16), torch.zeros(2, dtype=torch.uint8))


def test_round_to_int8_blocks_is_q8_0():
    """Per 32 values: scale amax/127, round half to even, back to float; a NaN or inf poisons its block."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 96, generator=g) * 5
    x[1, 32:64] = 0.0
    x[2, 5] = float("nan")
    x[2, 70] = float("inf")
    y = mxfp4.round_to_int8_blocks(x)
    step = x[0].view(3, 32).abs().amax(-1, keepdim=True) / 127
    assert ((y[0].view(3, 32) - x[0].view(3, 32)).abs() <= step / 2 * (1 + 1e-6)).all()
    assert torch.allclose(y[0].view(3, 32).abs().amax(-1), x[0].view(3, 32).abs().amax(-1))  # code 127
    codes = y[0].view(3, 32) / step
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # multiples of the step
    assert torch.equal(y[1, 32:64], torch.zeros(32))
    assert y[2, :32].isnan().all() and y[2, 64:].isnan().all() and not y[2, 32:64].isnan().any()
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.round_to_int8_blocks(torch.randn(2, 40))
