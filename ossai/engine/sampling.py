"""Sampling as small pure functions over one row of fp32 logits."""

from __future__ import annotations

import torch


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (always at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the mass before it already reaches top_p
    drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token id from logits [V]; greedy when temperature is 0."""
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(top_p_filter(logits.float() / temperature, top_p), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
