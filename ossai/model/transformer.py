"""The gpt-oss network: pre-norm blocks of attention (GQA, sinks, alternating sliding window, YaRN RoPE)
and a top-4 mixture of MXFP4 experts, then an untied unembedding.

Weights are not copied: every tensor is a view of the checkpoint's memory map (or, on a GPU, one copy
there). The modules register them as non-persistent buffers so `.to(device)` moves them. Activations run
in `dtype` (fp32 by default on CPU: exact against the reference math, and what the CPU kernels accumulate
in); norms, softmaxes and RoPE angles are always fp32.

Legend: T = tokens, H = hidden, E = experts, A = active experts per token, I = intermediate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ossai.config import ModelConfig
from ossai.model import mxfp4
from ossai.model.layers import Rotary, attention, linear, rms_norm, swiglu

UNEMBED_CHUNK = 32768  # vocab rows per unembedding matmul: bounds the upcast weight copy to ~0.4 GB

WeightGetter = Callable[[str], torch.Tensor]


class KVCache(Protocol):
    """Where keys and values live across steps (the engine's paged pool). `attend` stores this step's k, v
    for `layer` and returns the attention output of the step's queries over everything they may see."""

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        window: int | None,
        sinks: torch.Tensor,
        sm_scale: float,
    ) -> torch.Tensor: ...


class AttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, get: WeightGetter, rotary: Rotary):
        super().__init__()
        p = f"block.{layer}.attn"
        for name in ("norm.scale", "q.weight", "q.bias", "k.weight", "k.bias", "v.weight", "v.bias",
                     "sinks", "out.weight", "out.bias"):  # fmt: skip
            self.register_buffer(name.replace(".", "_"), get(f"{p}.{name}"), persistent=False)
        self.dense = linear  # bf16-weight products; kernels.accelerate() swaps in a fast op
        self.norm = rms_norm  # ...and here a fused one
        # kernels.accelerate() sets (weight, bias) of q, k and v as one matrix when the checkpoint stores
        # them so (the original layout's fused qkv): one product instead of three
        self.qkv: tuple[torch.Tensor, torch.Tensor] | None = None
        # ...and may set a whole-block op, fused(self, x, positions, cache), for decode steps over a paged
        # cache; it returns None where it does not apply, and this forward runs
        self.fused: Callable[..., torch.Tensor | None] | None = None
        self.layer = layer
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = config.sliding_window if config.is_sliding(layer) else None
        self.sm_scale = 1.0 / math.sqrt(config.head_dim)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        if self.fused is not None and cache is not None:
            out = self.fused(self, x, positions, cache)
            if out is not None:
                return out
        t = self.norm(x, self.norm_scale)
        n = x.shape[0]
        if self.qkv is not None:
            kv = self.k_weight.shape[0]
            q, k, v = self.dense(t, *self.qkv).split([self.q_weight.shape[0], kv, kv], dim=1)
        else:
            q = self.dense(t, self.q_weight, self.q_bias)
            k = self.dense(t, self.k_weight, self.k_bias)
            v = self.dense(t, self.v_weight, self.v_bias)
        q = q.view(n, self.heads, self.head_dim)  # [T, K*G, D]
        k = k.view(n, self.kv_heads, self.head_dim)  # [T, K, D]
        v = v.view(n, self.kv_heads, self.head_dim)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        if cache is None:  # one sequence, attending to itself
            a = attention(q, k, v, self.sinks, positions, positions, self.window, self.sm_scale)
        else:
            a = cache.attend(self.layer, q, k, v, positions, self.window, self.sinks, self.sm_scale)
        return x + self.dense(a, self.out_weight, self.out_bias)  # a: [T, K*G*D]


def mxfp4_linear(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [n, K] @ W^T + b for MXFP4 W (blocks [O, K/32, 16], scales [O, K/32]): the reference, which
    dequantizes W to x's dtype. The CPU kernel fuses the two and never materialises W."""
    return linear(x, mxfp4.dequantize(blocks, scales, x.dtype), bias)


class MLPBlock(nn.Module):
    """Router (top-A, softmax over the selected logits) and MXFP4 experts with the clamped SwiGLU."""

    def __init__(self, config: ModelConfig, layer: int, get: WeightGetter, int8_activations: bool = False):
        super().__init__()
        p = f"block.{layer}.mlp"
        for name in ("norm.scale", "gate.weight", "gate.bias", "mlp1_weight.blocks", "mlp1_weight.scales",
                     "mlp1_bias", "mlp2_weight.blocks", "mlp2_weight.scales", "mlp2_bias"):  # fmt: skip
            self.register_buffer(name.replace(".", "_"), get(f"{p}.{name}"), persistent=False)
        self.top_k = config.experts_per_token
        self.limit = config.swiglu_limit
        # opt-in (EngineConfig.moe_int8): the experts' inputs rounded to int8 per 32 values, as llama.cpp does
        self.int8_activations = int8_activations
        self.mxfp4_linear = mxfp4_linear  # kernels.accelerate() swaps in a fused op
        self.dense = linear
        self.norm = rms_norm
        self.fused: Callable[[MLPBlock, torch.Tensor], torch.Tensor | None] | None = None  # norm+mix+residual
        # kernels.accelerate() sets a fused block, called as mix(self, t) (None: reference_mix)
        self.mix: Callable[[MLPBlock, torch.Tensor], torch.Tensor] | None = None

    def route(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (expert ids [T, A], weights [T, A] fp32)"""
        logits = self.dense(t, self.gate_weight, self.gate_bias)  # [T, E]
        top, idx = torch.topk(logits, self.top_k, dim=-1, sorted=True)
        return idx, torch.softmax(top.float(), dim=-1)

    def experts(self, t: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sum over each token's experts of weight * expert(t). Tokens are grouped by expert so each
        selected expert's weights are read once per call, for all its tokens."""
        out = torch.zeros(t.shape, dtype=torch.float32, device=t.device)  # [T, H]
        inputs = mxfp4.round_to_int8_blocks(t) if self.int8_activations else t
        flat = idx.flatten()  # [T*A]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.mlp1_bias.shape[0]).tolist()
        start = 0
        for expert, count in enumerate(counts):
            if not count:
                continue
            slots = order[start : start + count]
            start += count
            tokens = slots // self.top_k
            w1 = (self.mlp1_weight_blocks[expert], self.mlp1_weight_scales[expert], self.mlp1_bias[expert])
            w2 = (self.mlp2_weight_blocks[expert], self.mlp2_weight_scales[expert], self.mlp2_bias[expert])
            h = swiglu(self.mxfp4_linear(inputs[tokens], *w1), self.limit)  # [n, 2I] -> [n, I]
            if self.int8_activations:
                h = mxfp4.round_to_int8_blocks(h)
            y = self.mxfp4_linear(h, *w2)  # [n, H]
            out.index_add_(0, tokens, y.float() * weights.flatten()[slots, None])
        return out.to(t.dtype)

    def reference_mix(self, t: torch.Tensor) -> torch.Tensor:
        """The block's output before the residual, for normed input t [T, H]."""
        return self.experts(t, *self.route(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            out = self.fused(self, x)
            if out is not None:
                return out
        t = self.norm(x, self.norm_scale)
        return x + (self.mix(self, t) if self.mix is not None else self.reference_mix(t))


class Transformer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        get: WeightGetter,
        dtype: torch.dtype = torch.float32,
        moe_int8: bool = False,
    ):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.register_buffer("embedding", get("embedding.weight"), persistent=False)
        self.register_buffer("norm_scale", get("norm.scale"), persistent=False)
        self.register_buffer("unembedding", get("unembedding.weight"), persistent=False)
        self.dense = linear
        self.norm = rms_norm
        self.rotary = Rotary(config)
        self.attn = nn.ModuleList(
            AttentionBlock(config, n, get, self.rotary) for n in range(config.num_hidden_layers)
        )
        self.mlp = nn.ModuleList(MLPBlock(config, n, get, moe_int8) for n in range(config.num_hidden_layers))

    def to(self, *args, **kwargs):  # type: ignore[override]
        out = super().to(*args, **kwargs)
        device = self.embedding.device
        if device != self.rotary.device:
            self.rotary = Rotary(self.config, device=device)
            for block in self.attn:
                block.rotary = self.rotary
        return out

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """tokens [T] int64 -> final hidden states [T, H] (before the final norm).

        Without a cache the tokens are one sequence at positions 0..T-1; with one, they may be several
        sequences' chunks, as the cache's batch metadata describes."""
        if positions is None:
            positions = torch.arange(tokens.shape[0], device=tokens.device)
        x = self.embedding[tokens].to(self.dtype)  # [T, H]
        for attn, mlp in zip(self.attn, self.mlp, strict=True):
            x = attn(x, positions, cache)
            x = mlp(x)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding: [T, H] -> [T, vocab] fp32, in vocab chunks."""
        t = self.norm(hidden, self.norm_scale)
        out = torch.empty(t.shape[0], self.config.vocab_size, dtype=torch.float32, device=t.device)
        for start in range(0, self.config.vocab_size, UNEMBED_CHUNK):
            rows = self.unembedding[start : start + UNEMBED_CHUNK]
            out[:, start : start + rows.shape[0]] = self.dense(t, rows).float()
        return out
