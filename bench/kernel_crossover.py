"""Timings that set the CPU kernels' dispatch: the fused MoE block (exact, and with int8 inputs) against
the grouped reference path, the MXFP4 product against dequantize-then-GEMM, paged attention against the
per-sequence reference.

    python bench/kernel_crossover.py CHECKPOINT [--threads 2] [--layer 1]

CHECKPOINT: a 20b- or 120b-shape checkpoint (`python -m ossai.testing.checkpoint --preset 20b --layers 4`).
Prints one line per case, milliseconds per call.
"""

from __future__ import annotations

import argparse
import time

import torch

from ossai import kernels
from ossai.config import SWIGLU_ALPHA
from ossai.engine import Engine
from ossai.kernels import cpu
from ossai.model import layers, transformer


def ms(fn, reps: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps * 1e3


def attention_case(
    module, c, seqs: int, rows: int, keys: int, g: torch.Generator
) -> tuple[float, float, float]:
    """`seqs` sequences of `keys` cached keys, each with `rows` new query rows: (kernel ms, reference ms,
    prefill path ms; the runner takes the last when every sequence has PREFILL_ROWS rows or more)."""
    kv, groups, d = c.num_key_value_heads, c.num_attention_heads // c.num_key_value_heads, c.head_dim
    k_pool = torch.randn(seqs * keys, kv, d, generator=g)
    v_pool = torch.randn(seqs * keys, kv, d, generator=g)
    sinks = torch.randn(kv * groups, generator=g)
    q = torch.randn(seqs * rows, kv * groups, d, generator=g)
    slots = torch.arange(seqs * keys).view(seqs, keys)
    pos = torch.arange(keys)
    q_pos = torch.arange(keys - rows, keys).repeat(seqs)
    row_start, key_start = torch.arange(seqs + 1) * rows, torch.arange(seqs + 1) * keys

    def kernel() -> torch.Tensor:
        return module.paged_attention(
            q, k_pool, v_pool, sinks, q_pos, row_start, slots.flatten(), pos.repeat(seqs), key_start, 0, 0.125
        )

    def reference() -> list[torch.Tensor]:
        parts = []
        for i in range(seqs):
            mine = slice(i * rows, (i + 1) * rows)
            k, v = k_pool[slots[i]], v_pool[slots[i]]
            parts.append(layers.attention(q[mine], k, v, sinks, q_pos[mine], pos, None, 0.125))
        return parts

    prefill = kernels.prefill_attention(torch.device("cpu"))

    def flash() -> list[torch.Tensor]:
        return [
            prefill(q[i * rows : (i + 1) * rows], k_pool[slots[i]], v_pool[slots[i]], sinks,
                    q_pos[i * rows : (i + 1) * rows], pos, None, 0.125)
            for i in range(seqs)
        ]  # fmt: skip

    reps = 20 if rows == 1 else 2
    return ms(kernel, reps), ms(reference, reps), ms(flash, reps) if prefill else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layer", type=int, default=1)
    args = p.parse_args()
    engine = Engine.load(args.checkpoint, threads=args.threads)
    module = cpu.load(required=True)
    mlp = engine.model.mlp[args.layer]
    hidden = engine.config.hidden_size
    g = torch.Generator().manual_seed(0)
    for rows in (1, 8, 16, 64, 512):
        x = torch.randn(rows, hidden, generator=g)
        reps = 20 if rows <= 16 else 2

        def fused(x=x, int8=False):
            return module.moe(
                x, mlp.gate_weight, mlp.gate_bias, mlp.top_k, mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales,
                mlp.mlp1_bias, mlp.mlp2_weight_blocks, mlp.mlp2_weight_scales, mlp.mlp2_bias, mlp.limit,
                SWIGLU_ALPHA, int8,
            )  # fmt: skip

        exact, int8 = ms(fused, reps), ms(lambda: fused(int8=True), reps)
        reference = ms(lambda x=x: mlp.reference_mix(x), reps)
        print(
            f"moe, {rows} rows: fused {exact:.1f} ms, fused with int8 inputs {int8:.1f} ms, "
            f"grouped reference {reference:.1f} ms",
            flush=True,
        )
    blocks, scales = mlp.mlp1_weight_blocks[0], mlp.mlp1_weight_scales[0]
    for rows in (16, 32, 64, 128):
        x = torch.randn(rows, hidden, generator=g)
        kernel = ms(lambda x=x: module.mxfp4_linear(x, blocks, scales, None), 3)
        dequant = ms(lambda x=x: transformer.mxfp4_linear(x, blocks, scales, None), 3)
        print(f"mxfp4_linear, {rows} rows: kernel {kernel:.1f} ms, dequantize + GEMM {dequant:.1f} ms")
    for label, seqs, rows, keys in (("decode 1 x 576", 1, 1, 576), ("decode 8 x 576", 8, 1, 576),
                                    ("prefill 512", 1, 512, 512)):  # fmt: skip
        kernel, reference, flash = attention_case(module, engine.config, seqs, rows, keys, g)
        print(
            f"attention, {label}: kernel {kernel:.2f}, reference {reference:.2f}, prefill path {flash:.2f} ms"
        )
    engine.close()


if __name__ == "__main__":
    main()
