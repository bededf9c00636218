"""The Triton MoE kernels (the GPU path) against MLPBlock's plain-torch experts. Without a GPU they run
under Triton's interpreter on CPU tensors: the same kernels, the same parity bound."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # read when the kernels are defined, so before the first import
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is in the test extra (make test installs it)")

from ossai import kernels as kernels_pkg
from ossai.kernels import triton_moe
from tests.kernels.conftest import moe_block

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    ("rows", "experts", "hidden", "intermediate"),
    [
        (1, 8, 64, 64),  # a decode step: four experts, one token each, padded to a tile
        (7, 8, 96, 64),  # hidden not a multiple of the 64-column reduction step
        (33, 4, 64, 160),  # 33 tokens per expert: three 16-row tiles, a partial column tile
        (5, 32, 64, 32),  # more experts than slots
        (70, 4, 64, 64),  # 70 tokens per expert: 64-row tiles
    ],
)
def test_fused_experts_match_reference(rows, experts, hidden, intermediate):
    mlp = moe_block(experts, hidden, intermediate, seed=rows * experts).to(DEVICE)
    t = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(rows)).to(DEVICE)
    ref = mlp.reference_mix(t)
    got = triton_moe.mix(mlp, t)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_fused_experts_in_bf16_stay_near_the_fp32_result():
    mlp = moe_block(8, 64, 64, seed=3).to(DEVICE)
    t = torch.randn(9, 64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    idx, route = mlp.route(t)  # one routing for both: a bf16 router could flip a near-tie
    ref = mlp.experts(t, idx, route)
    w1 = mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales, mlp.mlp1_bias
    w2 = mlp.mlp2_weight_blocks, mlp.mlp2_weight_scales, mlp.mlp2_bias
    got = triton_moe.experts(t.bfloat16(), idx, route, w1, w2, mlp.limit)
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() < 0.02 * ref.abs().max()


def test_align_groups_every_slot_once_by_expert_in_whole_tiles():
    idx = torch.tensor([[3, 0, 5, 1], [3, 5, 2, 0], [7, 3, 1, 0]])
    order, tile_expert = triton_moe.align(idx, experts=8, rows=4)
    n = idx.numel()
    assert sorted(order[order < n].tolist()) == list(range(n))  # each (token, expert) slot exactly once
    flat = idx.flatten()
    for tile, expert in enumerate(tile_expert.tolist()):
        slots = order[tile * 4 : tile * 4 + 4]
        real = slots[slots < n]
        if expert < 0:
            assert real.numel() == 0
        else:
            assert real.numel() > 0 and (flat[real.long()] == expert).all()
    # 6 active experts; 3, 0 hold 3 slots and 1, 5 two: one tile each, and the bound leaves spare tiles
    assert (tile_expert >= 0).sum() == 6 and tile_expert.numel() >= 6


def test_a_fast_mix_that_fails_at_first_use_falls_back_to_the_reference(caplog):
    mlp = moe_block(8, 64, 64, seed=1)
    t = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    calls = []

    def no_toolchain(mlp, t):
        calls.append(1)
        raise RuntimeError("ptxas not found")

    mix = kernels_pkg._guarded(no_toolchain)
    assert torch.equal(mix(mlp, t), mlp.reference_mix(t))
    assert torch.equal(mix(mlp, t), mlp.reference_mix(t))
    assert len(calls) == 1 and "ptxas not found" in caplog.text

    def fails_later(mlp, t):
        if calls:
            raise RuntimeError("illegal memory access")
        calls.append(1)
        return mlp.reference_mix(t)

    calls.clear()
    mix = kernels_pkg._guarded(fails_later)
    mix(mlp, t)
    with pytest.raises(RuntimeError, match="illegal memory access"):  # a real fault is not hidden
        mix(mlp, t)
