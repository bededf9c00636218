"""Fast paths that replace reference ops of the model after it is built (`accelerate`).

Each fast op keeps the plain-torch op in `ossai.model` as its reference and has a parity test against
it (tests/kernels/). Nothing here changes results beyond fp32 summation order.
"""

from __future__ import annotations

import logging

import torch

from ossai.model.transformer import Transformer

log = logging.getLogger(__name__)


def accelerate(model: Transformer, device: torch.device) -> list[str]:
    """Swap in the fast ops available for `device`; returns what was swapped."""
    swapped: list[str] = []
    if device.type == "cpu" and model.dtype == torch.float32:
        from ossai.kernels import cpu

        module = cpu.load()
        if module is not None:
            for mlp in model.mlp:
                mlp.mxfp4_linear = module.mxfp4_linear
            swapped.append("cpu.mxfp4_linear")
    if swapped:
        log.info("kernels: %s", ", ".join(swapped))
    return swapped
