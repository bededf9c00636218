"""A contiguous key/value cache for one sequence (the engine's paged cache replaces it for serving).

Full-attention layers keep every position. Sliding-window layers keep only the last `window` positions:
a query at position p sees keys p-window+1..p, so older entries can never be read again.
"""

from __future__ import annotations

import torch

from ossai.config import ModelConfig


class FullLayerCache:
    def __init__(self, capacity: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.k = torch.empty(capacity, kv_heads, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.positions = torch.arange(capacity, device=device)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        n = self.length + k.shape[0]
        if n > self.k.shape[0]:
            raise ValueError(f"KV cache capacity {self.k.shape[0]} exceeded ({n} tokens)")
        self.k[self.length : n] = k
        self.v[self.length : n] = v
        self.length = n
        return self.k[:n], self.v[:n], self.positions[:n]


class SlidingLayerCache:
    def __init__(self, window: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.window = window
        self.k = torch.empty(0, kv_heads, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.positions = torch.empty(0, dtype=torch.long, device=device)

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        k_all = torch.cat((self.k, k))
        v_all = torch.cat((self.v, v))
        pos_all = torch.cat((self.positions, positions))
        self.k, self.v, self.positions = k_all[-self.window :], v_all[-self.window :], pos_all[-self.window :]
        return k_all, v_all, pos_all


class KVCache(list):
    """One cache per layer, indexable by layer number as `Transformer.forward` expects."""

    def __init__(
        self, config: ModelConfig, capacity: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ):
        device = torch.device(device)
        kv, d = config.num_key_value_heads, config.head_dim
        super().__init__(
            SlidingLayerCache(config.sliding_window, kv, d, dtype, device)
            if config.is_sliding(n)
            else FullLayerCache(capacity, kv, d, dtype, device)
            for n in range(config.num_hidden_layers)
        )
        self.capacity = capacity
