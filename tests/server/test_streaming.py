"""The SSE writers keep a silent stream alive, and closing them stops what they were waiting for."""

from __future__ import annotations

import asyncio
import contextlib

from ossai.server.streaming import sse, with_keepalive


def test_silence_becomes_keepalives_and_the_items_all_arrive():
    async def slow():
        yield 1
        await asyncio.sleep(0.35)
        yield 2

    async def collect():
        return [item async for item in with_keepalive(slow(), every=0.1)]

    got = asyncio.run(collect())
    assert [x for x in got if x is not None] == [1, 2]
    assert got.count(None) >= 2  # ~0.35 s of silence at one keep-alive per 0.1 s
    assert got[0] == 1 and got[-1] == 2


def test_sse_writes_keepalive_comments_and_ends_with_done():
    async def slow():
        await asyncio.sleep(0.25)
        yield {"a": 1}

    async def collect():
        from ossai.server import streaming

        streaming.KEEPALIVE_S, saved = 0.1, streaming.KEEPALIVE_S
        try:
            return [frame async for frame in sse(slow())]
        finally:
            streaming.KEEPALIVE_S = saved

    frames = asyncio.run(collect())
    assert frames[0] == ": keep-alive\n\n"  # an SSE comment: clients skip it
    assert frames[-2:] == ['data: {"a":1}\n\n', "data: [DONE]\n\n"]


def test_closing_cancels_the_wait_on_the_source():
    state = {"cancelled": False}

    async def stuck():
        try:
            yield 1
            await asyncio.sleep(3600)  # a generation that would go on: the client is gone
            yield 2
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def run():
        async with contextlib.aclosing(with_keepalive(stuck(), every=0.05)) as items:
            async for item in items:
                if item is None:  # the source is now waiting
                    break
        await asyncio.sleep(0.05)  # the cancellation is delivered on the next turn of the loop

    asyncio.run(run())
    assert state["cancelled"]
