"""Continuous batching: which sequences run in the next step, and how many of their tokens. No torch.

Every step has a token budget. Running sequences go first: each decoding one needs one token, then each
sequence still in its prompt takes a chunk of what is left (chunked prefill, so a long prompt never
stalls the others). Then waiting requests join while budget and seats remain. When
the KV pool cannot hold a step, the newest running sequence is preempted: its blocks are freed and it
goes back to the front of the queue, to be recomputed later (cheaply, if its blocks are still cached).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ossai.engine.block_manager import BlockManager
from ossai.engine.sequence import Sequence, Status


@dataclass(slots=True)
class Scheduled:
    seq: Sequence
    start: int  # first position computed this step
    count: int  # tokens computed this step

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence's tokens, so its last logits are sampled."""
        return self.start + self.count == len(self.seq.tokens)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.token_budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Scheduled]:
        budget = self.token_budget
        batch: list[Scheduled] = []
        # decoding sequences first, then prompt chunks: a long prompt never stalls the others' tokens
        for seq in sorted(self.running, key=lambda s: s.remaining > 1):
            count = min(seq.remaining, budget)
            if seq.status is not Status.RUNNING or count == 0:
                continue
            budget += self._make_room(seq, count, batch)
            if seq.status is Status.RUNNING:
                batch.append(Scheduled(seq, seq.num_computed, count))
                budget -= count
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            seq.num_computed = self.blocks.match_prefix(seq.tokens, seq.tables)
            count = min(seq.remaining, budget)
            if not self.blocks.can_allocate(seq.tables, seq.num_computed, seq.num_computed + count):
                self.blocks.free(seq.tables)  # hold nothing while waiting
                seq.num_computed = 0
                if self.running or batch:
                    break  # wait for running requests to finish and free blocks
                raise AssertionError("KV pool too small for one request; Engine.submit checks this")
            if not seq.counted:
                self.blocks.record_lookup(seq.num_prompt, min(seq.num_computed, seq.num_prompt))
                seq.cached_tokens = min(seq.num_computed, seq.num_prompt)
                seq.counted = True
            self.blocks.allocate(seq.tables, seq.num_computed, seq.num_computed + count)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.append(Scheduled(seq, seq.num_computed, count))
            budget -= count
        return batch

    def _make_room(self, seq: Sequence, count: int, batch: list[Scheduled]) -> int:
        """Allocate blocks for seq's next `count` tokens, preempting the newest running sequences (seq itself
        last) as needed. Returns the budget given back by victims already in this step's batch."""
        start, end = seq.num_computed, seq.num_computed + count
        refund = 0
        while not self.blocks.can_allocate(seq.tables, start, end):
            victim = self.running[-1]
            for item in [i for i in batch if i.seq is victim]:
                batch.remove(item)
                refund += item.count
            self.preempt(victim)
            if victim is seq:
                return refund
        self.blocks.allocate(seq.tables, start, end)
        return refund

    def preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq.tables)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def computed(self, item: Scheduled) -> None:
        seq = item.seq
        seq.num_computed = item.start + item.count
        self.blocks.computed(seq.tables, seq.tokens, seq.num_computed)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks at once."""
        self.blocks.free(seq.tables)
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
