"""Owns the KV pools, turns a scheduled batch into tensors and runs the model over it.

All sequences of a step are flattened into one token vector, so every weight matrix (attention, router,
each selected expert, the unembedding) is read once per step for the whole batch; only attention is per
sequence, over keys gathered from the paged pool by block table.

Legend: N = tokens in the step, S = keys visible to a sequence, K = kv heads, D = head dim, L = layers.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ossai import kernels
from ossai.config import EngineConfig
from ossai.engine.block_manager import BlockManager
from ossai.engine.scheduler import Scheduled
from ossai.errors import BadRequest
from ossai.model.layers import attention
from ossai.model.transformer import Transformer

log = logging.getLogger(__name__)

FULL, SLIDING = 0, 1


def total_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


@dataclass(slots=True)
class BatchMeta:
    """Per-step addressing into the paged pools, built once per step and passed to the model."""

    runner: Runner
    segments: list[slice]  # each sequence's rows in the flattened step
    write_slots: list[torch.Tensor]  # per group: [N] pool slot of each new token
    read_slots: list[list[torch.Tensor]]  # per group, per sequence: [S] slots of the visible keys
    read_pos: list[list[torch.Tensor]]  # per group, per sequence: [S] their positions
    # the same for the attention kernel (empty without one): all sequences' rows and keys in flat vectors
    row_start: torch.Tensor | None = None  # [B+1]
    key_slots: list[torch.Tensor] = field(default_factory=list)  # per group: [sum S]
    key_pos: list[torch.Tensor] = field(default_factory=list)
    key_start: list[torch.Tensor] = field(default_factory=list)  # per group: [B+1]

    def attend(self, layer, q, k, v, positions, window, sinks, sm_scale) -> torch.Tensor:
        """Store this step's keys/values for `layer`, then attend each sequence over its cached keys."""
        group, index = self.runner.layer_slot[layer]
        k_pool, v_pool = self.runner.k_pools[group][index], self.runner.v_pools[group][index]  # [slots, K, D]
        k_pool[self.write_slots[group]] = k.to(k_pool.dtype)
        v_pool[self.write_slots[group]] = v.to(v_pool.dtype)
        every_prefill = self._every_prefill(group, q.dtype, k_pool.dtype)
        kernel = self.runner.attention_kernel
        if self._kernel_applies(every_prefill, q.dtype, k_pool.dtype):
            return kernel(
                q, k_pool, v_pool, sinks, positions, self.row_start, self.key_slots[group],
                self.key_pos[group], self.key_start[group], window or 0, sm_scale,
            )  # fmt: skip
        per_sequence = self.runner.prefill_attention if every_prefill else attention  # the same signature
        out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
        for i, rows in enumerate(self.segments):
            slots = self.read_slots[group][i]
            out[rows] = per_sequence(
                q[rows], k_pool[slots], v_pool[slots], sinks, positions[rows], self.read_pos[group][i],
                window, sm_scale,
            )  # fmt: skip
        return out

    def paged(self, layer: int, dtype: torch.dtype) -> PagedView | None:
        """What `attend` would hand the paged kernel for `layer` and queries of `dtype`, for an op that runs
        the whole attention block in one call (kernels.accelerate); None where `attend` goes another way."""
        group, index = self.runner.layer_slot[layer]
        k_pool, v_pool = self.runner.k_pools[group][index], self.runner.v_pools[group][index]
        if not self._kernel_applies(self._every_prefill(group, dtype, k_pool.dtype), dtype, k_pool.dtype):
            return None
        return PagedView(
            k_pool, v_pool, self.write_slots[group], self.row_start, self.key_slots[group],
            self.key_pos[group], self.key_start[group],
        )  # fmt: skip

    def _every_prefill(self, group: int, q_dtype: torch.dtype, pool_dtype: torch.dtype) -> bool:
        """Every sequence of the step is a prefill chunk: blocked GEMMs beat the paged kernel."""
        return (
            self.runner.prefill_attention is not None
            and q_dtype == pool_dtype == torch.float32
            and min(s.stop - s.start for s in self.segments) >= kernels.PREFILL_ROWS
            and max(len(r) for r in self.read_slots[group]) <= kernels.PREFILL_KEYS
        )

    def _kernel_applies(self, every_prefill: bool, q_dtype: torch.dtype, pool_dtype: torch.dtype) -> bool:
        return (
            not every_prefill
            and self.runner.attention_kernel is not None
            and self.row_start is not None
            and q_dtype == pool_dtype == torch.float32
        )


class PagedView(NamedTuple):
    """One layer's pools and the step's addressing, as the paged attention kernel takes them."""

    k_pool: torch.Tensor  # [slots, K, D]
    v_pool: torch.Tensor
    write_slots: torch.Tensor  # [N] where this step's keys and values go
    row_start: torch.Tensor  # [B+1]
    key_slots: torch.Tensor  # [sum S]
    key_pos: torch.Tensor
    key_start: torch.Tensor  # [B+1]


class Runner:
    def __init__(self, model: Transformer, config: EngineConfig, device: torch.device):
        self.model = model
        self.device = device
        self.attention_kernel = kernels.paged_attention(device)  # None: the reference, per sequence
        self.prefill_attention = kernels.prefill_attention(device)
        mc = model.config
        self.block_size = bs = config.block_size
        self.window = mc.sliding_window
        layers = [[n for n in range(mc.num_hidden_layers) if not mc.is_sliding(n)], []]
        layers[SLIDING] = [n for n in range(mc.num_hidden_layers) if mc.is_sliding(n)]
        self.layer_slot = {n: (g, i) for g in (FULL, SLIDING) for i, n in enumerate(layers[g])}
        dtype = model.dtype
        token_bytes = [
            len(group) * 2 * mc.kv_dim * dtype.itemsize for group in layers
        ]  # per token, per group
        if config.kv_cache_mb:
            budget = int(config.kv_cache_mb * 2**20)
        else:
            budget = int(config.kv_cache_fraction * total_memory_bytes(device))
        # sliding layers: each running sequence holds its window, plus the step's new tokens; a quarter more
        # keeps recently released windows around for prefix-cache hits
        per_seq = -(-self.window // bs) + 1
        sliding_blocks = int(
            1.25 * (config.max_num_seqs * (per_seq + 1) + -(-config.max_num_batched_tokens // bs))
        )
        if token_bytes[SLIDING]:
            sliding_blocks = min(sliding_blocks, budget // 2 // (bs * token_bytes[SLIDING]))
        full_budget = budget - sliding_blocks * bs * token_bytes[SLIDING]
        model_len = min(config.max_model_len or mc.max_context, mc.max_context)
        if token_bytes[FULL]:
            full_blocks = full_budget // (bs * token_bytes[FULL])
        else:  # no full-attention layers: the full tables only track positions
            full_blocks = config.max_num_seqs * -(-model_len // bs)
        chunk_blocks = -(-config.max_num_batched_tokens // bs)
        if full_blocks < chunk_blocks + 1 or sliding_blocks < per_seq + chunk_blocks + 1:
            raise BadRequest(f"the KV cache budget ({budget / 2**20:.2f} MiB) is too small for this model")
        self.max_model_len = min(model_len, full_blocks * bs)
        self.blocks = BlockManager(bs, full_blocks, sliding_blocks, self.window, config.prefix_caching)
        counts = (full_blocks, sliding_blocks)
        self.k_pools = [
            torch.empty(
                len(layers[g]),
                counts[g] * bs,
                mc.num_key_value_heads,
                mc.head_dim,
                dtype=dtype,
                device=device,
            )
            for g in (FULL, SLIDING)
        ]
        self.v_pools = [torch.empty_like(p) for p in self.k_pools]
        self.pool_bytes = sum(p.numel() * p.element_size() * 2 for p in self.k_pools)
        log.info(
            "KV cache: %d full + %d sliding blocks of %d tokens, %.0f MiB, context %d",
            full_blocks, sliding_blocks, bs, self.pool_bytes / 2**20, self.max_model_len,
        )  # fmt: skip

    def _slots(self, table: list[int] | list[int | None], start: int, end: int) -> torch.Tensor:
        bs = self.block_size
        blocks = torch.tensor([-1 if b is None else b for b in table[start // bs : -(-end // bs)]])
        pos = torch.arange(start, end)
        return blocks[pos // bs - start // bs] * bs + pos % bs

    def build(self, batch: list[Scheduled]) -> tuple[torch.Tensor, torch.Tensor, BatchMeta]:
        tokens, positions, segments = [], [], []
        writes: list[list[torch.Tensor]] = [[], []]
        reads: list[list[torch.Tensor]] = [[], []]
        read_pos: list[list[torch.Tensor]] = [[], []]
        row = 0
        for item in batch:
            seq, start, end = item.seq, item.start, item.start + item.count
            tokens.extend(seq.tokens[start:end])
            positions.append(torch.arange(start, end))
            segments.append(slice(row, row + item.count))
            row += item.count
            first_visible = (0, max(0, start - self.window + 1))
            for g, table in ((FULL, seq.tables.full), (SLIDING, seq.tables.sliding)):
                writes[g].append(self._slots(table, start, end))
                reads[g].append(self._slots(table, first_visible[g], end).to(self.device))
                read_pos[g].append(torch.arange(first_visible[g], end, device=self.device))
        meta = BatchMeta(
            runner=self,
            segments=segments,
            write_slots=[torch.cat(w).to(self.device) for w in writes],
            read_slots=reads,
            read_pos=read_pos,
        )
        if self.attention_kernel is not None:
            meta.row_start = torch.tensor([0, *itertools.accumulate(s.stop - s.start for s in segments)])
            meta.key_slots = [torch.cat(r) for r in reads]
            meta.key_pos = [torch.cat(p) for p in read_pos]
            meta.key_start = [torch.tensor([0, *itertools.accumulate(len(r) for r in g)]) for g in reads]
        return torch.tensor(tokens, device=self.device), torch.cat(positions).to(self.device), meta

    @torch.inference_mode()
    def step(self, batch: list[Scheduled]) -> torch.Tensor:
        """Run one step; returns fp32 logits [n, vocab] for the items that sample, in batch order."""
        tokens, positions, meta = self.build(batch)
        hidden = self.model(tokens, positions, meta)
        rows = [seg.stop - 1 for seg, item in zip(meta.segments, batch, strict=True) if item.samples]
        if not rows:
            return torch.empty(0, self.model.config.vocab_size)
        return self.model.logits(hidden[rows]).float().cpu()
