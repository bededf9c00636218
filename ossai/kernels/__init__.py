"""Fast paths that replace reference ops of the model after it is built (`accelerate`).

Each fast op keeps the plain-torch op in `ossai.model` as its reference and has a parity test against
it (tests/kernels/). Nothing here changes results beyond fp32 summation order (the opt-in int8 MoE
inputs are the reference's too: `MLPBlock.int8_activations`).
"""

from __future__ import annotations

import logging

import torch

from ossai.config import RMS_NORM_EPS, SWIGLU_ALPHA
from ossai.model.layers import linear, rms_norm, visible_keys
from ossai.model.transformer import MLPBlock, Transformer, mxfp4_linear

log = logging.getLogger(__name__)


DECODE_ROWS = 16  # up to this many rows a step takes the whole-block attention call (decode)


def accelerate(model: Transformer, device: torch.device) -> list[str]:
    """Swap in the fast ops available for `device`; returns what was swapped."""
    swapped: list[str] = []
    if device.type == "cpu" and model.dtype == torch.float32:
        from ossai.kernels import cpu

        module = cpu.load()
        if module is not None:
            install_cpu(model, module)
            if model.mlp[0].int8_activations and module.int8_path == "portable":
                log.warning(
                    "kernels: this CPU has no SIMD int8 path; --moe-int8 is slower than the exact path"
                )
            swapped += ["cpu.moe", "cpu.mxfp4_linear", "cpu.bf16_linear", "cpu.rms_norm", "cpu.rope"]
    if device.type == "cuda":
        from ossai.kernels import triton_moe

        if triton_moe.available():  # CUDA builds of torch bring triton; without it the reference stays
            mix = _guarded(triton_moe.mix)
            for mlp in model.mlp:
                mlp.mix = mix
            swapped.append("triton.moe")
    if swapped:
        log.info("kernels: %s", ", ".join(swapped))
    return swapped


def install_cpu(model: Transformer, module) -> None:
    """Point the model's ops at `module`'s kernels (the extension, or a stand-in with the same functions,
    as the step profiler's timed wrappers)."""
    dense = _bf16_dense(module.bf16_linear, getattr(module, "bf16_max_rows", DECODE_ROWS))
    # getattr: the step profiler may install an older build without these
    norm = _fused_norm(module.rms_norm) if hasattr(module, "rms_norm") else rms_norm
    experts = _fused_mxfp4(module.mxfp4_linear)
    mix = _fused_moe(module.moe)
    # whole blocks in one call (builds before these have none: the step profiler's timed kernels)
    mlp_block = _fused_mlp(module.mlp_block) if hasattr(module, "mlp_block") else None
    attention_block = _fused_attention(module.attention_block) if hasattr(module, "attention_block") else None
    for mlp in model.mlp:
        mlp.mxfp4_linear = experts
        mlp.dense = dense
        mlp.norm = norm
        mlp.mix = mix
        # the kernel wants the experts contiguous: checked once here, not in every step
        mlp.fused = mlp_block if all(w.is_contiguous() for w in _packed(mlp)) else None
    for attn in model.attn:
        attn.dense = dense
        attn.norm = norm
        weight = consecutive_rows(attn.q_weight, attn.k_weight, attn.v_weight)
        bias = consecutive_rows(attn.q_bias, attn.k_bias, attn.v_bias)
        if weight is not None and bias is not None:
            attn.qkv = weight, bias
            if weight.dtype == attn.out_weight.dtype == torch.bfloat16 and attn.out_weight.is_contiguous():
                attn.fused = attention_block
    model.dense = dense
    model.norm = norm
    model.rotary.kernel = getattr(module, "rope", None)


def consecutive_rows(*parts: torch.Tensor) -> torch.Tensor | None:
    """One view over tensors that are consecutive rows of one storage (q, k, v sliced from the original
    layout's qkv), or None when they are not."""
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    end = first.data_ptr()
    for p in parts:
        if not p.is_contiguous() or p.dtype != first.dtype or p.shape[1:] != first.shape[1:]:
            return None
        if p.untyped_storage().data_ptr() != storage:  # adjacent by chance, not one tensor
            return None
        if p.data_ptr() != end:
            return None
        end += p.numel() * p.element_size()
    rows = sum(p.shape[0] for p in parts)
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


def paged_attention(device: torch.device):
    """The extension's attention over a paged KV pool (all sequences and kv heads of a layer in one call),
    or None where it does not apply: the runner then attends per sequence with `layers.attention`."""
    if device.type != "cpu":
        return None
    from ossai.kernels import cpu

    module = cpu.load()
    return None if module is None else module.paged_attention


PREFILL_ROWS = 32  # a sequence's rows in a step from which prefill attention goes through blocked GEMMs
PREFILL_KEYS = 4096  # ...up to this many visible keys: the op wants K/V per query head and a dense float
#   mask, 2 x 64 MB and 8 MB per layer at 4096 keys and a 512-row chunk; longer contexts keep the kernel


def prefill_attention(device: torch.device):
    """`layers.attention` for many query rows of one sequence (prefill) through torch's blocked CPU
    flash-attention, 4x faster than the paged kernel on a 512-token prompt (BENCHMARKS.md), or None where
    that op is missing. The sink is folded in afterwards: flash-attention returns each row's log-sum-exp
    over the visible keys, and adding one value-less logit scales the output by sigmoid(lse - sink)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if device.type != "cpu" or op is None:
        return None

    def attend(q, k, v, sinks, q_pos, k_pos, window, sm_scale):
        n_heads, groups = q.shape[1], q.shape[1] // k.shape[1]
        visible = visible_keys(q_pos, k_pos, window)  # [T, S]
        mask = torch.zeros(visible.shape, dtype=q.dtype).masked_fill_(~visible, float("-inf"))
        qh = q.transpose(0, 1).unsqueeze(0)  # [1, H, T, D]
        kh = k.transpose(0, 1).repeat_interleave(groups, 0).unsqueeze(0)  # [1, H, S, D]
        vh = v.transpose(0, 1).repeat_interleave(groups, 0).unsqueeze(0)
        out, lse = op(qh, kh, vh, 0.0, False, attn_mask=mask, scale=sm_scale)
        out = out * torch.sigmoid(lse - sinks.float().view(1, n_heads, 1)).unsqueeze(-1)
        return out[0].transpose(0, 1).reshape(q.shape[0], -1)

    return attend


def _fused_mxfp4(kernel):
    """`transformer.mxfp4_linear` with the fused kernel for fp32 rows (faster than dequantize-then-GEMM at
    every row count measured, 1 to 128; BENCHMARKS.md)."""

    def experts(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        if x.dtype == torch.float32:
            return kernel(x, blocks, scales, bias)
        return mxfp4_linear(x, blocks, scales, bias)

    return experts


def _fused_moe(kernel):
    """`MLPBlock.reference_mix` as one call into the extension (routing, every active expert with bias and
    SwiGLU, the weighted sum): four parallel regions per layer instead of a few per expert, and no Python
    between them; for decode and prefill alike (2.7x the grouped reference path on a 512-token chunk)."""

    def mix(mlp: MLPBlock, t: torch.Tensor) -> torch.Tensor:
        packed = _packed(mlp)
        if t.dtype == torch.float32 and all(w.is_contiguous() for w in packed):
            return kernel(
                t, mlp.gate_weight, mlp.gate_bias, mlp.top_k, packed[0], packed[1], mlp.mlp1_bias,
                packed[2], packed[3], mlp.mlp2_bias, mlp.limit, SWIGLU_ALPHA,
                *((True,) if mlp.int8_activations else ()),  # builds before int8 take 12 arguments
            )  # fmt: skip
        return mlp.reference_mix(t)

    return mix


def _fused_attention(kernel):
    """`AttentionBlock.forward` as one call for a decode step (at most DECODE_ROWS rows) whose attention
    takes the paged kernel: the same kernels in the same order, so the same result, without the ~15 Python
    ops per layer between them (a 20b decode step's glue 12 -> 7-8 ms; BENCHMARKS.md). None: the block's
    own path."""

    def forward(block, x: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor | None:
        paged = getattr(cache, "paged", None)  # the engine's cache has it; others run the block's path
        if paged is None or x.dtype != torch.float32 or x.dim() != 2 or x.shape[0] > DECODE_ROWS:
            return None
        view = paged(block.layer, x.dtype)
        if view is None or block.qkv is None:
            return None
        cos, sin = block.rotary.tables(positions)
        k_pool, v_pool, write_slots, row_start, key_slots, key_pos, key_start = view
        return kernel(
            x, block.norm_scale, RMS_NORM_EPS, *block.qkv, block.heads, block.kv_heads, block.out_weight,
            block.out_bias, cos, sin, positions, k_pool, v_pool, write_slots, block.sinks, row_start,
            key_slots, key_pos, key_start, block.window or 0, block.sm_scale,
        )  # fmt: skip

    return forward


def _fused_mlp(kernel):
    """`MLPBlock.forward` (norm, the fused mix, residual) as one call for fp32 rows; None otherwise."""

    def forward(mlp: MLPBlock, x: torch.Tensor) -> torch.Tensor | None:
        if x.dtype != torch.float32 or x.dim() != 2:
            return None
        w1, s1, w2, s2 = _packed(mlp)
        return kernel(
            x, mlp.norm_scale, RMS_NORM_EPS, mlp.gate_weight, mlp.gate_bias, mlp.top_k, w1, s1, mlp.mlp1_bias,
            w2, s2, mlp.mlp2_bias, mlp.limit, SWIGLU_ALPHA, mlp.int8_activations,
        )  # fmt: skip

    return forward


def _packed(m: MLPBlock) -> tuple[torch.Tensor, ...]:
    """The experts' MXFP4 blocks and scales, mlp1 then mlp2."""
    return m.mlp1_weight_blocks, m.mlp1_weight_scales, m.mlp2_weight_blocks, m.mlp2_weight_scales


def _guarded(fast):
    """`fast` as an MLPBlock mix that falls back to the reference for good, with one warning, if its first
    use fails (a Triton that cannot compile for this GPU): an optional fast path never stops a model."""
    state: dict[str, bool] = {}

    def mix(mlp: MLPBlock, t: torch.Tensor) -> torch.Tensor:
        if not state.get("broken"):
            try:
                out = fast(mlp, t)
                state["ok"] = True
                return out
            except Exception as exc:
                if state.get("ok"):  # it worked before: a real error, not a missing toolchain
                    raise
                state["broken"] = True
                log.warning("kernels: %s failed (%s); using the reference MoE", fast.__qualname__, exc)
        return mlp.reference_mix(t)

    return mix


def _fused_norm(kernel):
    """`layers.rms_norm` in one call for fp32 rows (a decode step's norms cost ~8 torch ops each)."""

    def norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and x.dim() == 2:
            return kernel(x, scale, RMS_NORM_EPS)
        return rms_norm(x, scale)

    return norm


def _bf16_dense(kernel, max_rows: int):
    """`layers.linear` with the kernel for fp32 rows against contiguous bf16 weights (up to `max_rows`
    rows, 0: any number; beyond, upcasting the weight for a torch GEMM is faster on that build)."""

    def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if (
            x.dim() == 2
            and (max_rows == 0 or x.shape[0] <= max_rows)
            and weight.dtype == torch.bfloat16
            and weight.is_contiguous()
        ):
            return kernel(x, weight, bias)
        return linear(x, weight, bias)

    return dense
