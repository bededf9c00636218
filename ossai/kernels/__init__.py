"""Fast paths that replace reference ops of the model after it is built (`accelerate`).

Each fast op keeps the plain-torch op in `ossai.model` as its reference and has a parity test against
it (tests/kernels/). Nothing here changes results beyond fp32 summation order.
"""

from __future__ import annotations

import logging

import torch

from ossai.model.layers import linear
from ossai.model.transformer import Transformer

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
            for mlp in model.mlp:
                mlp.mxfp4_linear = module.mxfp4_linear
                mlp.dense = dense
            for attn in model.attn:
                attn.dense = dense
            model.dense = dense
            swapped += ["cpu.mxfp4_linear", "cpu.bf16_linear"]
    if swapped:
        log.info("kernels: %s", ", ".join(swapped))
    return swapped


def _decode_dense(kernel):
    """`layers.linear` with the kernel for few fp32 rows against contiguous bf16 weights."""

    def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] <= DECODE_ROWS and weight.dtype == torch.bfloat16 and weight.is_contiguous():
            return kernel(x, weight, bias)
        return linear(x, weight, bias)

    return dense
