"""Helpers shared by the kernel tests."""

from __future__ import annotations

import torch

from ossai.config import ModelConfig
from ossai.model import transformer


def moe_block(experts: int, hidden: int, intermediate: int, seed: int) -> transformer.MLPBlock:
    """An MLPBlock with random weights in the checkpoint's dtypes (bf16 router and biases, MXFP4 experts)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "norm.scale": ((hidden,), None),
        "gate.weight": ((experts, hidden), torch.bfloat16),
        "gate.bias": ((experts,), torch.bfloat16),
        "mlp1_weight.blocks": ((experts, 2 * intermediate, hidden // 32, 16), torch.uint8),
        "mlp1_weight.scales": ((experts, 2 * intermediate, hidden // 32), torch.uint8),
        "mlp1_bias": ((experts, 2 * intermediate), torch.bfloat16),
        "mlp2_weight.blocks": ((experts, hidden, intermediate // 32, 16), torch.uint8),
        "mlp2_weight.scales": ((experts, hidden, intermediate // 32), torch.uint8),
        "mlp2_bias": ((experts, hidden), torch.bfloat16),
    }
    weights = {}
    for name, (shape, dtype) in shapes.items():
        if dtype is torch.uint8:
            low, high = (118, 124) if name.endswith("scales") else (0, 256)
            weights[name] = torch.randint(low, high, shape, dtype=torch.uint8, generator=g)
        else:
            weights[name] = torch.randn(shape, generator=g).to(dtype or torch.float32)
    config = ModelConfig(
        num_hidden_layers=1, num_experts=experts, experts_per_token=4, hidden_size=hidden,
        intermediate_size=intermediate, vocab_size=256, head_dim=32, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    return transformer.MLPBlock(config, 0, lambda name: weights[name.removeprefix("block.0.mlp.")])
