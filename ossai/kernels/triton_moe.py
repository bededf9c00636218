"""The MoE block on GPUs as two Triton kernels that read the MXFP4 experts packed.

The plain-torch path (`MLPBlock.experts`) loops over the active experts in Python and dequantizes each
one before its GEMM: a decode step launches a few kernels per expert and writes a bf16 copy of every
expert it touches. Here one launch computes every (token, expert) pair's gate/up product with the bias
and the clamped SwiGLU, a second the down product with the bias and the routing weight, and a sum over
each token's experts finishes the block. The slots are grouped by expert and padded to whole row tiles
(`align`), so each program multiplies one expert's tile of rows: the weights of an expert are read once
per row tile, unpacked in registers (E2M1 nibble -> value, times 2^(scale - 127)), never written out.

Nothing here waits for the GPU: the grid is sized from T, A and the expert count, never from the routing.
The kernels run under Triton's interpreter on CPU tensors too (TRITON_INTERPRET=1): that is how the parity
tests check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING

import torch

from ossai.config import SWIGLU_ALPHA

if TYPE_CHECKING:
    from ossai.model.transformer import MLPBlock

ROWS = 16  # row tile: tl.dot's smallest; a decode step pads each expert's one token to it
WIDE_ROWS = 64  # ...and when experts average this many tokens (prefill): each tile unpacks the weights once
COLS = 64  # output columns per program
DEPTH = 64  # reduction step: two MXFP4 blocks


@functools.cache
def available() -> bool:
    try:
        import triton.language  # noqa: F401
    except Exception:  # absent, or a broken install: the reference ops still work
        return False
    return True


def align(idx: torch.Tensor, experts: int, rows: int = ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the T*A (token, expert) slots of `idx` [T, A] by expert, each group padded to whole tiles of
    `rows`. Returns (order [P] int32: the slot at each padded position, T*A where padding; tile_expert
    [P / rows] int32: each tile's expert, -1 past the last). P is a bound fixed by T, A and the expert
    count, never by the routing, so the grid needs no host sync."""
    flat = idx.flatten()
    n = flat.numel()
    # bincount would read the ids' range back to the host on CUDA
    counts = torch.zeros(experts, dtype=torch.long, device=flat.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + rows - 1) // rows * rows
    ends = torch.cumsum(padded, 0)
    by_expert = torch.argsort(flat, stable=True)
    expert = flat[by_expert]
    rank = torch.arange(n, device=flat.device) - (torch.cumsum(counts, 0) - counts)[expert]
    tiles = (n + rows - 1) // rows + min(experts, n)  # each active expert wastes at most one partial tile
    order = torch.full((tiles * rows,), n, dtype=torch.int32, device=flat.device)
    order[(ends - padded)[expert] + rank] = by_expert.to(torch.int32)
    starts = torch.arange(tiles, device=flat.device) * rows
    tile_expert = torch.searchsorted(ends, starts, right=True)
    tile_expert = torch.where(tile_expert < experts, tile_expert, -1).to(torch.int32)
    return order, tile_expert


if available():
    import triton
    import triton.language as tl

    @triton.jit
    def _e2m1(nibble):
        """E2M1 codes (int32, 0-15) to float32 by building the bits: 0, 0.5, then 2^(e-1) * (1 + m/2)."""
        code = nibble & 7
        normal = (((code >> 1) + 126) << 23) | ((code & 1) << 22)
        bits = tl.where(code >= 2, normal, tl.where(code == 1, 126 << 23, 0)) | ((nibble & 8) << 28)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _weights(blocks, scales, row, row_ok, k0, K, DEPTH: tl.constexpr, EVEN_K: tl.constexpr):
        """W[row, k0 : k0 + DEPTH] of one expert in float32 [len(row), DEPTH]: byte j of a row holds
        elements 2j (low nibble) and 2j + 1 (high nibble); one E8M0 scale per 32 elements."""
        j = k0 // 2 + tl.arange(0, DEPTH // 2)
        g = k0 // 32 + tl.arange(0, DEPTH // 32)
        if EVEN_K:
            ok, g_ok = row_ok[:, None], row_ok[:, None]
        else:
            ok, g_ok = row_ok[:, None] & (2 * j < K)[None, :], row_ok[:, None] & (32 * g < K)[None, :]
        packed = tl.load(blocks + row[:, None] * (K // 2) + j[None, :], mask=ok, other=0).to(tl.int32)
        exponent = tl.load(scales + row[:, None] * (K // 32) + g[None, :], mask=g_ok, other=127).to(tl.int32)
        # 2^(e - 127) from the bits; e = 0 would be a subnormal, which GPUs may flush: take it from exp2
        scale = tl.where(exponent > 0, (exponent << 23).to(tl.float32, bitcast=True), tl.exp2(-127.0))
        w = tl.join(_e2m1(packed & 15), _e2m1(packed >> 4))  # [n, DEPTH/2, 2]: element order restored
        w = tl.reshape(w, (row.shape[0], DEPTH // 32, 32)) * scale[:, :, None]
        return tl.reshape(w, (row.shape[0], DEPTH))

    @triton.jit
    def _rows(x, row, row_ok, k0, K, DEPTH: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr):
        """x[row, k0 : k0 + DEPTH], to meet `_weights`."""
        k = k0 + tl.arange(0, DEPTH)
        ok = row_ok[:, None] if EVEN_K else row_ok[:, None] & (k < K)[None, :]
        rows = tl.load(x + row[:, None] * K + k[None, :], mask=ok, other=0.0)
        return rows.to(tl.float32) if UPCAST else rows

    @triton.jit
    def _up_kernel(
        x, order, tile_expert, blocks, scales, bias, h, n_slots, A, K, inter, limit, alpha,
        ROWS: tl.constexpr, COLS: tl.constexpr, DEPTH: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr, EVEN_K: tl.constexpr,
    ):  # fmt: skip
        """h[p, i] = SwiGLU(x[token(p)] @ W1[e]^T + b1[e]) for the padded positions p of one row tile, and
        intermediate columns i: gate row 2i and linear row 2i + 1 are multiplied side by side."""
        tile, col = tl.program_id(0), tl.program_id(1)
        e = tl.load(tile_expert + tile)
        if e >= 0:
            p = tile * ROWS + tl.arange(0, ROWS)
            slot = tl.load(order + p)
            token_ok = slot < n_slots
            token = tl.where(token_ok, slot // A, 0)
            i = col * COLS + tl.arange(0, COLS)
            i_ok = i < inter
            e_blocks = blocks + e.to(tl.int64) * (2 * inter) * (K // 2)
            e_scales = scales + e * (2 * inter) * (K // 32)
            gate = tl.zeros((ROWS, COLS), dtype=tl.float32)
            lin = tl.zeros((ROWS, COLS), dtype=tl.float32)
            for k0 in range(0, K, DEPTH):
                xs = _rows(x, token, token_ok, k0, K, DEPTH, EVEN_K, UPCAST)
                wg = _weights(e_blocks, e_scales, 2 * i, i_ok, k0, K, DEPTH, EVEN_K).to(xs.dtype)
                wl = _weights(e_blocks, e_scales, 2 * i + 1, i_ok, k0, K, DEPTH, EVEN_K).to(xs.dtype)
                gate += tl.dot(xs, tl.trans(wg), input_precision=PRECISION)
                lin += tl.dot(xs, tl.trans(wl), input_precision=PRECISION)
            gate += tl.load(bias + e * 2 * inter + 2 * i, mask=i_ok, other=0.0).to(tl.float32)[None, :]
            lin += tl.load(bias + e * 2 * inter + 2 * i + 1, mask=i_ok, other=0.0).to(tl.float32)[None, :]
            gate = tl.minimum(gate, limit)
            lin = tl.minimum(tl.maximum(lin, -limit), limit)
            out = gate * tl.sigmoid(alpha * gate) * (lin + 1.0)
            tl.store(h + p[:, None] * inter + i[None, :], out.to(h.dtype.element_ty), mask=i_ok[None, :])

    @triton.jit
    def _down_kernel(
        h, order, tile_expert, route, blocks, scales, bias, y, n_slots, inter, H,
        ROWS: tl.constexpr, COLS: tl.constexpr, DEPTH: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr, EVEN_K: tl.constexpr,
    ):  # fmt: skip
        """y[slot(p), c] = route[slot(p)] * (h[p] @ W2[e]^T + b2[e])[c], rows written per slot."""
        tile, col = tl.program_id(0), tl.program_id(1)
        e = tl.load(tile_expert + tile)
        if e >= 0:
            p = tile * ROWS + tl.arange(0, ROWS)
            slot = tl.load(order + p)
            slot_ok = slot < n_slots
            c = col * COLS + tl.arange(0, COLS)
            c_ok = c < H
            e_blocks = blocks + e.to(tl.int64) * H * (inter // 2)
            e_scales = scales + e * H * (inter // 32)
            acc = tl.zeros((ROWS, COLS), dtype=tl.float32)
            for k0 in range(0, inter, DEPTH):
                hs = _rows(h, p, slot_ok, k0, inter, DEPTH, EVEN_K, UPCAST)
                w = _weights(e_blocks, e_scales, c, c_ok, k0, inter, DEPTH, EVEN_K).to(hs.dtype)
                acc += tl.dot(hs, tl.trans(w), input_precision=PRECISION)
            acc += tl.load(bias + e * H + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            weight = tl.load(route + slot, mask=slot_ok, other=0.0)
            out = acc * weight[:, None]
            tl.store(y + slot[:, None] * H + c[None, :], out, mask=slot_ok[:, None] & c_ok[None, :])


def experts(
    t: torch.Tensor,
    idx: torch.Tensor,
    route: torch.Tensor,
    w1: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    w2: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    limit: float,
) -> torch.Tensor:
    """`MLPBlock.experts` in two launches: t [T, H], idx [T, A] expert ids, route [T, A] fp32 weights,
    w1/w2 = (blocks, scales, bias) of all experts (contiguous). Returns [T, H] in t's dtype."""
    (T, H), A = t.shape, idx.shape[1]
    E, two_i = w1[0].shape[:2]
    inter = two_i // 2
    rows = WIDE_ROWS if T * A >= WIDE_ROWS * E else ROWS
    order, tile_expert = align(idx, E, rows)
    h = torch.empty((order.numel(), inter), dtype=t.dtype, device=t.device)
    y = torch.zeros((T * A, H), dtype=torch.float32, device=t.device)
    # fp32 models multiply in full fp32 (no TF32), so a GPU step gives the CPU's greedy tokens
    precision = "ieee" if t.dtype == torch.float32 else None  # None: the target's default
    tiles = tile_expert.numel()
    x = t.contiguous()
    # Triton's interpreter multiplies bf16 tiles wrongly (numpy has no bf16): there, rows widen to fp32 first
    upcast = t.dtype != torch.float32 and not t.is_cuda
    common = {"ROWS": rows, "COLS": COLS, "DEPTH": DEPTH, "PRECISION": precision, "UPCAST": upcast}
    # Triton launches on the current device, not the tensors'
    with torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext():
        _up_kernel[(tiles, triton.cdiv(inter, COLS))](
            x, order, tile_expert, *w1, h, T * A, A, H, inter, float(limit), SWIGLU_ALPHA,
            EVEN_K=H % DEPTH == 0, **common,
        )  # fmt: skip
        _down_kernel[(tiles, triton.cdiv(H, COLS))](
            h, order, tile_expert, route.float().contiguous(), *w2, y, T * A, inter, H,
            EVEN_K=inter % DEPTH == 0, **common,
        )  # fmt: skip
    return y.view(T, A, H).sum(1).to(t.dtype)


def mix(mlp: MLPBlock, t: torch.Tensor) -> torch.Tensor:
    """`MLPBlock.reference_mix` with the fused experts (the router stays a torch GEMM + topk)."""
    w1 = mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales, mlp.mlp1_bias
    w2 = mlp.mlp2_weight_blocks, mlp.mlp2_weight_scales, mlp.mlp2_bias
    if not all(w.is_contiguous() for w in (*w1, *w2)):
        return mlp.reference_mix(t)
    idx, route = mlp.route(t)
    return experts(t, idx, route, w1, w2, mlp.limit)
