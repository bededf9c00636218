"""Sampling's pure functions: the draw follows the distribution, masks and filters hold."""

from __future__ import annotations

import torch

from ossai.config import SamplingParams
from ossai.engine.sampling import constrained, draw, filter_logits, sample


def test_draws_follow_the_probabilities_and_never_pick_a_zero():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4, 0.0])
    g = torch.Generator().manual_seed(0)
    n = 40_000
    counts = torch.bincount(torch.tensor([draw(probs, g) for _ in range(n)]), minlength=6).double()
    assert counts[1] == 0 and counts[5] == 0
    expected = probs.double() * n
    nonzero = probs > 0
    chi2 = float((((counts - expected) ** 2)[nonzero] / expected[nonzero]).sum())
    assert chi2 < 16.3  # 3 degrees of freedom: p = 0.001


def test_a_masked_vocabulary_samples_only_allowed_tokens():
    vocab = 201_088
    allowed = [5, 70_000, 200_012]
    mask = bytearray((vocab + 32) // 32 * 4)
    for t in allowed:
        mask[t // 8] |= 1 << (t % 8)
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    params = SamplingParams(max_tokens=1, temperature=1.0)
    drawn = {sample(logits, params, g, allowed=bytes(mask))[0] for _ in range(200)}
    assert drawn <= set(allowed) and len(drawn) > 1
    assert torch.equal(constrained(logits, bytes(len(mask))), logits)  # nothing allowed: the mask is ignored


def _nucleus_by_sorting(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered, order = torch.sort(logits, descending=True)
    probs = torch.softmax(ordered.double(), dim=-1)
    drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
    return torch.empty_like(logits).scatter_(-1, order, ordered.masked_fill(drop, float("-inf")))


def test_top_p_keeps_the_tokens_a_full_sort_keeps():
    g = torch.Generator().manual_seed(0)
    for scale, top_p in ((10.0, 0.9), (5.0, 0.5), (5.0, 0.95), (0.1, 0.9), (1.0, 0.99)):  # peaked .. flat
        logits = torch.randn(201_088, generator=g) * scale
        kept = ~torch.isinf(filter_logits(logits, 0, top_p, 0.0))
        expected = ~torch.isinf(_nucleus_by_sorting(logits, top_p))
        assert int((kept != expected).sum()) <= 1, (scale, top_p)  # one boundary token of rounding
        assert torch.equal(filter_logits(logits, 0, top_p, 0.0)[kept], logits[kept])
