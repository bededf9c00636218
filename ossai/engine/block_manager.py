"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts, prefix hashing. No torch.

gpt-oss alternates sliding-window and full-attention layers, so the cache is two groups of layers, each
with its own pool of blocks (the same block size, so logical block i of a sequence covers the same 16
positions in both). Full layers keep every block. Sliding layers release a block as soon as the window
has moved past it, which halves the cache of long sequences.

Prefix caching: a block completely filled with computed tokens gets a content hash chained from the
previous block's, and is registered under it in both groups. A released block keeps its hash and its data
and sits in an LRU list of free blocks until it is reused for something else, so a later request with the
same prefix (a shared system prompt, a conversation growing turn by turn) finds it and skips that
prefill. A hit needs the full-layer blocks of the whole prefix and the sliding-layer blocks of its last
window.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field


def block_hashes(
    tokens: Seq[int], block_size: int, count: int, start: int = 0, parent: bytes = b""
) -> list[bytes]:
    """Chained content hashes of full blocks start..count-1 of `tokens`; `parent` is block start-1's hash."""
    hashes = []
    for i in range(start, count):
        chunk = array("q", tokens[i * block_size : (i + 1) * block_size]).tobytes()
        parent = hashlib.blake2b(parent + chunk, digest_size=16).digest()
        hashes.append(parent)
    return hashes


@dataclass(slots=True)
class Block:
    id: int
    ref_count: int = 0
    hash: bytes | None = None


class BlockPool:
    """One group's blocks: a free LRU (which may still hold cached prefixes) and a hash index."""

    def __init__(self, num_blocks: int):
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.index: dict[bytes, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> int:
        """A fresh block: the least recently freed one, forgetting whatever prefix it cached."""
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self.index.get(block.hash) == block_id:
                del self.index[block.hash]
            block.hash = None
        block.ref_count = 1
        return block_id

    def lookup(self, h: bytes) -> int | None:
        return self.index.get(h)

    def acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count <= 0:
            raise AssertionError(f"block {block_id} released more often than acquired")
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None  # most recently used end: evicted last

    def register(self, block_id: int, h: bytes) -> None:
        block = self.blocks[block_id]
        if block.hash is None and h not in self.index:
            block.hash = h
            self.index[h] = block_id


@dataclass(slots=True)
class BlockTables:
    """A sequence's blocks per group; None marks sliding-layer blocks already released."""

    full: list[int] = field(default_factory=list)
    sliding: list[int | None] = field(default_factory=list)
    hashed: int = 0  # leading full blocks already registered in the prefix index
    last_hash: bytes = b""  # the hash of block hashed-1, to chain the next ones from
    released: int = 0  # leading sliding blocks already released


class BlockManager:
    def __init__(
        self, block_size: int, full_blocks: int, sliding_blocks: int, window: int, prefix_caching=True
    ):
        self.block_size = block_size
        self.window = window
        self.full = BlockPool(full_blocks)
        self.sliding = BlockPool(sliding_blocks)
        self.prefix_caching = prefix_caching
        self.queried_tokens = 0  # prefix-cache statistics, in prompt tokens
        self.hit_tokens = 0

    def _first_live(self, start: int) -> int:
        """The first logical block a query at position `start` (or later) can still read in sliding layers."""
        return max(0, start - self.window + 1) // self.block_size

    def match_prefix(self, tokens: Seq[int], tables: BlockTables) -> int:
        """Take the cached blocks of the longest cached prefix of tokens[:-1]; returns its length in tokens.

        The last token is always computed (its logits are needed), so a block holding it is never
        shared: a fully cached prompt recomputes its last block (vLLM's rule; no copy-on-write)."""
        bs = self.block_size
        usable = (len(tokens) - 1) // bs
        hits = 0
        if self.prefix_caching and usable:
            hashes = block_hashes(tokens, bs, usable)
            while hits < usable and self.full.lookup(hashes[hits]) is not None:
                hits += 1
            # the sliding layers need the prefix's last window, or the hit shrinks
            while hits and any(
                self.sliding.lookup(h) is None for h in hashes[self._first_live(hits * bs) : hits]
            ):
                hits -= 1
            for i in range(hits):
                block_id = self.full.lookup(hashes[i])
                self.full.acquire(block_id)
                tables.full.append(block_id)
            first = self._first_live(hits * bs)
            tables.sliding.extend([None] * first)
            for i in range(first, hits):
                block_id = self.sliding.lookup(hashes[i])
                self.sliding.acquire(block_id)
                tables.sliding.append(block_id)
            tables.hashed = hits
            tables.last_hash = hashes[hits - 1] if hits else b""
        return hits * bs

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        """Prefix-cache statistics, counted once per request (not per retry or re-admission)."""
        self.queried_tokens += prompt_tokens
        self.hit_tokens += hit_tokens

    def blocks_needed(self, tables: BlockTables, start: int, end: int) -> tuple[int, int]:
        """(full, sliding) blocks to allocate so that positions [start, end) have blocks."""
        needed = -(-end // self.block_size)
        full = max(0, needed - len(tables.full))
        sliding = max(0, needed - max(len(tables.sliding), self._first_live(start)))
        return full, sliding

    def can_allocate(self, tables: BlockTables, start: int, end: int) -> bool:
        full, sliding = self.blocks_needed(tables, start, end)
        return full <= self.full.num_free and sliding <= self.sliding.num_free

    def allocate(self, tables: BlockTables, start: int, end: int) -> None:
        """Give the positions [start, end) blocks in both groups (call can_allocate first)."""
        needed = -(-end // self.block_size)
        while len(tables.full) < needed:
            tables.full.append(self.full.allocate())
        first = self._first_live(start)
        while len(tables.sliding) < first:
            tables.sliding.append(None)
        while len(tables.sliding) < needed:
            tables.sliding.append(self.sliding.allocate())

    def computed(self, tables: BlockTables, tokens: Seq[int], num_computed: int) -> None:
        """After a step: hash the newly completed blocks, release sliding blocks behind the window."""
        full_blocks = num_computed // self.block_size
        if self.prefix_caching and full_blocks > tables.hashed:
            hashes = block_hashes(tokens, self.block_size, full_blocks, tables.hashed, tables.last_hash)
            for i, h in enumerate(hashes, start=tables.hashed):
                self.full.register(tables.full[i], h)
                if tables.sliding[i] is not None:
                    self.sliding.register(tables.sliding[i], h)
            tables.hashed, tables.last_hash = full_blocks, hashes[-1]
        for i in range(tables.released, self._first_live(num_computed)):
            block_id = tables.sliding[i]
            if block_id is not None:
                self.sliding.release(block_id)
                tables.sliding[i] = None
        tables.released = max(tables.released, self._first_live(num_computed))

    def free(self, tables: BlockTables) -> None:
        for block_id in tables.full:
            self.full.release(block_id)
        for block_id in tables.sliding:
            if block_id is not None:
                self.sliding.release(block_id)
        tables.full.clear()
        tables.sliding.clear()
        tables.hashed, tables.last_hash, tables.released = 0, b"", 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def usage(self) -> float:
        """Fraction of blocks held by running sequences (cached-but-free blocks count as free)."""
        total = self.full.num_blocks + self.sliding.num_blocks
        return 1.0 - (self.full.num_free + self.sliding.num_free) / total if total else 0.0
