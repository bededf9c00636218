"""MXFP4 (OCP microscaling FP4): the packed format of gpt-oss's MoE expert weights.

Each row of an expert matrix is split along the reduction dim into blocks of 32 values. A block is 16 bytes
of E2M1 nibbles plus one E8M0 scale byte. The plain-torch functions here are the reference the fast kernels
are tested against; the model keeps weights packed and dequantizes only the experts a step selects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BYTES_PER_BLOCK = 16  # 32 FP4 values, two per byte
VALUES_PER_BLOCK = 32
SCALE_BIAS = 127  # E8M0: value = 2^(byte - 127)

# E2M1 code -> value; bit 3 is the sign. Index = nibble.
FP4_VALUES = (
    +0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)  # fmt: skip

_PAIR_LUTS: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _pair_lut(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """byte -> (value of its low nibble, value of its high nibble): [256, 2]. One lookup per byte instead
    of two per nibble makes the plain-torch dequantization ~5x faster, with identical results."""
    key = (dtype, device)
    if key not in _PAIR_LUTS:
        lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
        byte = torch.arange(256)
        pairs = torch.stack((lut[byte & 0x0F], lut[byte >> 4]), dim=-1)
        _PAIR_LUTS[key] = pairs.to(dtype=dtype, device=device)
    return _PAIR_LUTS[key]


def dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unpack MXFP4 to `dtype`.

    blocks: uint8 [..., G, 16]; scales: uint8 [..., G]  ->  [..., G * 32]
    In byte j of a block the low nibble is element 2j and the high nibble element 2j+1.
    Every FP4 value times a power of two is exact in bf16 and fp32 (outside the E8M0 extremes).
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        shapes = f"blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}"
        raise ValueError(f"MXFP4 shapes do not match: {shapes}")
    *lead, groups, _ = blocks.shape
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    # [..., G, 16] bytes -> [..., G, 16, 2] values: element 2j from the low nibble, 2j+1 from the high one
    values = F.embedding(blocks.reshape(-1).int(), _pair_lut(compute, blocks.device))
    values = values.view(*lead, groups, VALUES_PER_BLOCK)
    values.mul_(torch.exp2(scales.to(compute) - SCALE_BIAS).unsqueeze(-1))  # [..., G, 32] * [..., G, 1]
    return values.to(dtype).reshape(*lead, groups * VALUES_PER_BLOCK)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round floats [..., K] (K a multiple of 32) to MXFP4 blocks [..., K/32, 16] and scales [..., K/32].

    The scale of a block is the smallest power of two that maps its largest magnitude into [-6, 6]; each
    value then rounds to the nearest E2M1 code. Used to write test checkpoints and the demo model.
    """
    *lead, k = weight.shape
    if k % VALUES_PER_BLOCK:
        raise ValueError(f"last dim {k} is not a multiple of {VALUES_PER_BLOCK}")
    w = weight.float().reshape(*lead, k // VALUES_PER_BLOCK, VALUES_PER_BLOCK)
    amax = w.abs().amax(dim=-1, keepdim=True).clamp_min(2.0**-126)
    exponent = torch.ceil(torch.log2(amax / 6.0)).clamp(-SCALE_BIAS, 127)
    scaled = w / torch.exp2(exponent)
    magnitudes = torch.tensor(FP4_VALUES[:8], device=w.device)
    codes = (scaled.abs().unsqueeze(-1) - magnitudes).abs().argmin(dim=-1)
    codes = codes | ((scaled < 0).long() << 3)
    codes = codes.to(torch.uint8).reshape(*w.shape[:-1], BYTES_PER_BLOCK, 2)
    blocks = codes[..., 0] | (codes[..., 1] << 4)
    scales = (exponent.squeeze(-1) + SCALE_BIAS).to(torch.uint8)
    return blocks, scales


def round_to_int8_blocks(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] rounded to int8 per block of 32 values with scale amax/127 (llama.cpp's Q8_0) and back:
    the reference for the MoE's opt-in int8 activations, where the fused kernel multiplies the int8 values
    by the doubled E2M1 values exactly in integers. K must be a multiple of 32."""
    if x.shape[-1] % VALUES_PER_BLOCK:
        raise ValueError(f"int8 blocks need a multiple of {VALUES_PER_BLOCK} values, got {x.shape[-1]}")
    blocks = x.float().unflatten(-1, (-1, VALUES_PER_BLOCK))
    d = blocks.abs().amax(-1, keepdim=True) / 127.0  # NaN or inf in a block make all of it NaN below
    q = torch.round(blocks / d.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
    return (torch.where(d > 0, q, 0.0) * d).flatten(-2).to(x.dtype)
