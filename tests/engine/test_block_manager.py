"""Block manager and scheduler as plain data structures: no model, milliseconds."""

from __future__ import annotations

from ossai.config import SamplingParams
from ossai.engine.block_manager import BlockManager, BlockTables
from ossai.engine.scheduler import Scheduler
from ossai.engine.sequence import Request, Sequence, Status


def _manager(full=64, sliding=64, bs=4, window=8) -> BlockManager:
    return BlockManager(bs, full, sliding, window)


def _compute(m: BlockManager, tables: BlockTables, tokens: list[int], upto: int, start=0, step=1):
    for pos in range(start, upto, step):
        end = min(upto, pos + step)
        m.allocate(tables, pos, end)
        m.computed(tables, tokens, end)


def test_sliding_blocks_are_released_behind_the_window():
    m = _manager()
    tables = BlockTables()
    tokens = list(range(100))
    _compute(m, tables, tokens, 100)
    live = [b for b in tables.sliding if b is not None]
    # the next query (position 100) sees 93..100: blocks 23, 24 (and 25 once allocated)
    assert len(live) == 2 and tables.sliding[:23] == [None] * 23
    assert len(tables.full) == 25
    assert m.sliding.num_free == 64 - 2 and m.full.num_free == 64 - 25
    m.free(tables)
    assert m.full.num_free == m.sliding.num_free == 64
    assert m.usage() == 0.0


def test_prefix_hit_reuses_full_blocks_and_the_last_window():
    m = _manager()
    first = BlockTables()
    tokens = list(range(1000, 1042))  # 10 full blocks + 2
    _compute(m, first, tokens, 42)
    m.free(first)  # finished: blocks stay cached in the free LRU
    second = BlockTables()
    hit = m.match_prefix([*tokens[:40], 7, 7, 7], second)
    assert hit == 40
    assert second.full == first.full[:10] if first.full else True
    # sliding: only the blocks covering the last window before position 40 (33..39: blocks 8, 9)
    assert second.sliding[:8] == [None] * 8 and all(b is not None for b in second.sliding[8:10])
    other = BlockTables()
    assert m.match_prefix([1, 2, 3, 4, 5, 6, 7, 8, 9], other) == 0


def test_prefix_hit_shrinks_when_the_sliding_window_was_evicted():
    m = _manager(full=64, sliding=8)
    tables = BlockTables()
    tokens = list(range(40))
    _compute(m, tables, tokens, 40)
    m.free(tables)
    # reuse every free sliding block for something else: the cached window is gone
    filler = BlockTables()
    m.allocate(filler, 0, 32)
    m.free(filler)
    assert m.match_prefix([*tokens, 1], BlockTables()) == 0


def test_a_fully_cached_prompt_recomputes_its_last_block():
    m = _manager()
    tables = BlockTables()
    tokens = list(range(16))
    _compute(m, tables, tokens, 16)
    m.free(tables)
    again = BlockTables()
    assert m.match_prefix(tokens, again) == 12  # tokens[:-1] holds 3 full blocks: the 4th is recomputed
    assert again.full == tables.full[:3] if tables.full else len(again.full) == 3


def test_a_waiting_request_holds_no_blocks():
    """A request whose prefix hit cannot be completed must not sit on the cached blocks it matched."""
    m = _manager(full=6, sliding=64, bs=4)
    s = Scheduler(m, max_num_seqs=8, max_num_batched_tokens=64)
    cached = _seq(16)
    s.add(cached)
    for item in s.schedule():
        s.computed(item)
    cached.tokens.append(1)
    s.finish(cached)  # its 4 blocks stay cached, free
    running = _seq(4, first_token=500)
    s.add(running)
    for item in s.schedule():
        s.computed(item)
    running.tokens.append(1)
    waiting = Sequence(Request([*range(16), *range(900, 906)], SamplingParams(max_tokens=8)))
    s.add(waiting)
    batch = s.schedule()  # 4 cached blocks + 2 new don't fit next to `running`: it waits, holding nothing
    assert waiting.status is Status.WAITING and not waiting.tables.full
    assert [i.seq for i in batch] == [running]
    for _ in range(20):  # `running` keeps decoding and needs blocks: never a crash, never a deadlock
        for item in s.schedule():
            s.computed(item)
            if item.samples:
                item.seq.tokens.append(1)


def _seq(n_prompt: int, first_token: int = 0) -> Sequence:
    prompt = list(range(first_token, first_token + n_prompt))
    return Sequence(Request(prompt, SamplingParams(max_tokens=8)))


def test_chunked_prefill_keeps_decoding_others():
    m = _manager(full=256, sliding=256)
    s = Scheduler(m, max_num_seqs=8, max_num_batched_tokens=16)
    decoding = _seq(4)
    s.add(decoding)
    batch = s.schedule()
    for item in batch:
        s.computed(item)
    decoding.tokens.append(1)  # sampled
    long = _seq(100)
    s.add(long)
    counts = []
    for _ in range(3):
        batch = s.schedule()
        counts.append({id(i.seq): i.count for i in batch})
        for item in batch:
            s.computed(item)
            if item.seq is decoding:
                decoding.tokens.append(1)
    for step in counts:
        assert step[id(decoding)] == 1  # one decode token every step
        assert step[id(long)] == 15  # the rest of the budget goes to the prompt chunk


def test_preemption_frees_the_newest_and_requeues_it_first():
    m = _manager(full=6, sliding=64, bs=4)
    s = Scheduler(m, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = _seq(8), _seq(8, first_token=100)  # different prompts: no prefix sharing
    s.add(a)
    s.add(b)
    for item in s.schedule():  # both prefill: 2 + 2 blocks of 6
        s.computed(item)
    b.tokens.append(1)  # b sampled a token and decodes next (needing its 3rd block)
    a.tokens += [1] * 9  # a has 9 more tokens to compute (needing 3 more blocks): there is room for one
    batch = s.schedule()
    # b was scheduled first (decodes go first) but is the newest: it is preempted and taken out again
    assert [(i.seq, i.count) for i in batch] == [(a, 9)]
    assert b.status is Status.WAITING and s.waiting[0] is b and not b.tables.full
    assert s.preemptions == 1 and len(a.tables.full) == 5
