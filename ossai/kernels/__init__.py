"""Fast paths that replace reference ops of the model after it is built (`accelerate`).

Each fast op keeps the plain-torch op in `ossai.model` as its reference and has a parity test against
it (tests/kernels/). Nothing here changes results beyond fp32 summation order.
"""

from __future__ import annotations

import logging

import torch

from ossai.model.layers import linear
from ossai.model.transformer import Transformer, mxfp4_linear

log = logging.getLogger(__name__)


DECODE_ROWS = 16  # up to this many rows the CPU kernels beat upcast-then-GEMM; beyond, GEMM wins


def accelerate(model: Transformer, device: torch.device) -> list[str]:
    """Swap in the fast ops available for `device`; returns what was swapped."""
    swapped: list[str] = []
    if device.type == "cpu" and model.dtype == torch.float32:
        from ossai.kernels import cpu

        module = cpu.load()
        if module is not None:
            dense = _decode_dense(module.bf16_linear)
            experts = _decode_mxfp4(module.mxfp4_linear)
            for mlp in model.mlp:
                mlp.mxfp4_linear = experts
                mlp.dense = dense
            for attn in model.attn:
                attn.dense = dense
            model.dense = dense
            swapped += ["cpu.mxfp4_linear", "cpu.bf16_linear"]
    if swapped:
        log.info("kernels: %s", ", ".join(swapped))
    return swapped


def _decode_mxfp4(kernel):
    """`transformer.mxfp4_linear` with the fused kernel for few fp32 rows per expert; beyond, a dequantized
    matrix fed to a GEMM is faster (prefill)."""

    def experts(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        if x.shape[0] <= DECODE_ROWS and x.dtype == torch.float32:
            return kernel(x, blocks, scales, bias)
        return mxfp4_linear(x, blocks, scales, bias)

    return experts


def _decode_dense(kernel):
    """`layers.linear` with the kernel for few fp32 rows against contiguous bf16 weights."""

    def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] <= DECODE_ROWS and weight.dtype == torch.bfloat16 and weight.is_contiguous():
            return kernel(x, weight, bias)
        return linear(x, weight, bias)

    return dense
