"""The engine end to end on a random tiny checkpoint: batching, seeds, stops, aborts, preemption, prefix
cache. Outputs are compared token for token against the same request run alone."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch

from ossai import harmony
from ossai.engine import Engine, EngineConfig, Request, SamplingParams
from ossai.errors import BadRequest, ContextLengthError


@pytest.fixture
def make_engine(tiny):
    engines: list[Engine] = []

    def make(**config) -> Engine:
        engine = Engine.load(tiny, config=EngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 40, 17, 140, 3, 64, 90, 200][:n]
    return [torch.randint(0, 199_000, (length,), generator=g).tolist() for length in lengths]


def _run(engine: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    return list(engine.generate(prompt, params))


def _wait_idle(engine: Engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.stats().running or engine.stats().waiting:
        assert time.monotonic() < deadline, "engine did not go idle"
        time.sleep(0.01)


def test_greedy_batch_equals_alone_with_staggered_arrivals(make_engine):
    engine = make_engine(max_num_batched_tokens=64)
    prompts = _prompts(8)
    params = [SamplingParams(max_tokens=12 + 3 * i, temperature=0.0) for i in range(8)]
    alone = [_run(engine, p, sp) for p, sp in zip(prompts, params, strict=True)]
    # now all 8 together, each arriving after the previous one produced its first token
    streams, outputs = [], [[] for _ in range(8)]
    for i in range(8):
        streams.append(iter(engine.submit(Request(prompts[i], params[i]))))
        first = next(streams[i])
        outputs[i] += first.token_ids
    for i, stream in enumerate(streams):
        for out in stream:
            outputs[i] += out.token_ids
    assert outputs == alone
    assert engine.stats().generated_tokens == 2 * sum(len(a) for a in alone)


def test_first_requests_arriving_together_share_one_runner(make_engine, monkeypatch):
    """A server's first requests come at once; each used to build the paged runner (its own KV pools and
    block manager) and blocks allocated in one were freed in another: the engine died."""
    from ossai.engine import engine as engine_module

    built = []
    real = engine_module.Runner

    def slow_runner(*args, **kwargs):  # widen the window in which a second thread could build one
        built.append(threading.current_thread().name)
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "Runner", slow_runner)
    engine = make_engine()
    prompts = _prompts(3)
    params = SamplingParams(max_tokens=4, temperature=0.0)
    outputs: list[list[int] | None] = [None] * 3
    start = threading.Barrier(3)

    def run(i: int) -> None:
        start.wait()
        outputs[i] = _run(engine, prompts[i], params)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(built) == 1
    assert outputs == [_run(engine, p, params) for p in prompts]
    assert engine.stats().kv_usage == 0.0


def test_seeded_sampling_is_reproducible_whatever_the_batch(make_engine):
    engine = make_engine()
    prompt = _prompts(1, seed=3)[0]
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    alone = _run(engine, prompt, params)
    assert _run(engine, prompt, params) == alone
    noise = [
        engine.submit(Request(p, SamplingParams(max_tokens=30, temperature=1.0))) for p in _prompts(6, seed=9)
    ]
    in_batch = _run(engine, prompt, params)
    for stream in noise:
        list(stream)
    assert in_batch == alone
    assert _run(engine, prompt, SamplingParams(max_tokens=24, temperature=1.0, seed=99)) != alone


def test_stop_string_spanning_tokens_is_not_emitted(make_engine):
    engine = make_engine()
    prompt = _prompts(2, seed=5)[1]
    base = SamplingParams(max_tokens=30, temperature=0.0)
    outs = list(engine.submit(Request(prompt, base)))
    pieces = [o.text for o in outs]
    text = "".join(pieces)
    # a stop string made of the end of one token's text and the start of the next one's
    for i in range(3, len(pieces) - 1):
        stop = pieces[i][-2:] + pieces[i + 1][:2]
        if (
            len(pieces[i]) >= 2
            and len(pieces[i + 1]) >= 2
            and text.find(stop) == len("".join(pieces[:i])) + len(pieces[i]) - 2
        ):
            break
    else:
        pytest.skip("no suitable token boundary in this random output")
    stopped = list(
        engine.submit(Request(prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=(stop,))))
    )
    assert "".join(o.text for o in stopped) == text[: text.find(stop)]
    assert stopped[-1].finish_reason == "stop" and stopped[-1].finished


def test_stop_token_ends_the_request_and_is_not_in_the_text(make_engine):
    engine = make_engine()
    prompt = _prompts(1, seed=6)[0]
    tokens = _run(engine, prompt, SamplingParams(max_tokens=10, temperature=0.0))
    outs = list(
        engine.submit(
            Request(prompt, SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids={tokens[4]}))
        )
    )
    assert [t for o in outs for t in o.token_ids] == tokens[: tokens.index(tokens[4]) + 1]
    assert outs[-1].finish_reason == "stop"
    assert "".join(o.text for o in outs) == harmony.decode(tokens[: tokens.index(tokens[4])])


def test_abort_frees_every_block(make_engine):
    engine = make_engine()
    stream = iter(engine.submit(Request(_prompts(4)[3], SamplingParams(max_tokens=500, temperature=0.0))))
    for _ in range(3):
        next(stream)
    stream.close()  # leaving the iteration aborts
    _wait_idle(engine)
    assert engine.stats().kv_usage == 0.0
    blocks = engine.runner.blocks
    assert (
        blocks.full.num_free == blocks.full.num_blocks
        and blocks.sliding.num_free == blocks.sliding.num_blocks
    )


def test_preemption_under_a_tiny_pool_keeps_outputs_exact(make_engine):
    # 0.25 MiB: 16 full + 16 sliding blocks of 16 tokens: two of these 90-token requests at once at most
    small = make_engine(kv_cache_mb=0.25, max_num_seqs=4, max_num_batched_tokens=64)
    roomy = make_engine()
    prompts = _prompts(8, seed=11)
    prompts = [p[:50] for p in prompts]
    params = SamplingParams(max_tokens=40, temperature=0.0)
    expected = [_run(roomy, p, params) for p in prompts]
    streams = [small.submit(Request(p, params)) for p in prompts]
    got = [[t for out in s for t in out.token_ids] for s in streams]
    assert got == expected
    assert small.stats().preemptions > 0
    _wait_idle(small)
    assert small.stats().kv_usage == 0.0


def test_prefix_cache_reuse_gives_the_same_logprobs(make_engine):
    cached = make_engine()
    fresh = make_engine(prefix_caching=False)
    system = _prompts(4, seed=21)[3]  # a shared 140-token prefix
    question = [101, 202, 303]
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=5)
    list(cached.submit(Request([*system, 7, 7], params)))  # warms the cache
    outs = list(cached.submit(Request(system + question, params)))
    assert outs[-1].cached_tokens == 128  # 8 full blocks of the 140-token prefix
    reference = list(fresh.submit(Request(system + question, params)))
    assert [o.token_ids for o in outs] == [o.token_ids for o in reference]
    for a, b in zip(outs, reference, strict=True):
        assert abs(a.logprobs[0].logprob - b.logprobs[0].logprob) < 1e-5
        assert [t for t, _ in a.logprobs[0].top] == [t for t, _ in b.logprobs[0].top]
    assert cached.stats().prefix_hit_rate > 0.4


def test_asyncio_streams(make_engine):
    engine = make_engine()
    prompts = _prompts(3, seed=2)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    expected = [_run(engine, p, params) for p in prompts]

    async def main():
        async def one(prompt):
            return [t async for out in engine.submit(Request(prompt, params)) for t in out.token_ids]

        return await asyncio.gather(*(one(p) for p in prompts))

    assert asyncio.run(main()) == expected


def test_context_and_parameter_errors(make_engine):
    engine = make_engine(max_model_len=64)
    with pytest.raises(ContextLengthError, match="exceeds the context of 64"):
        engine.submit(Request(list(range(60)), SamplingParams(max_tokens=10)))
    with pytest.raises(BadRequest, match="empty"):
        engine.submit(Request([], SamplingParams()))
    with pytest.raises(BadRequest, match="token ids"):
        engine.submit(Request([1, 10**9], SamplingParams()))
    with pytest.raises(BadRequest, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(BadRequest, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_a_fully_cached_prompt_recomputes_its_last_block_and_matches(make_engine):
    cached = make_engine()
    fresh = make_engine(prefix_caching=False)
    prompt = _prompts(8, seed=4)[7][:144]  # exactly 9 blocks of 16
    params = SamplingParams(max_tokens=5, temperature=0.0, logprobs=True)
    first = list(cached.submit(Request(prompt, params)))
    again = list(cached.submit(Request(prompt, params)))
    reference = list(fresh.submit(Request(prompt, params)))
    assert again[-1].cached_tokens == 128 and first[-1].cached_tokens == 0
    assert [o.token_ids for o in again] == [o.token_ids for o in reference] == [o.token_ids for o in first]
    assert abs(again[0].logprobs[0].logprob - reference[0].logprobs[0].logprob) < 1e-5


def test_a_constraint_holds_sampled_function_arguments_to_the_schema(make_engine):
    """Random weights sampled at temperature 1 write JSON of the schema only through the mask."""
    engine = make_engine()
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green"]}, "on": {"type": "boolean"}},
        "required": ["color", "on"],
    }
    header = harmony.load_encoding().encode(
        "<|channel|>commentary to=functions.paint <|constrain|>json<|message|>", allowed_special="all"
    )
    prompt = _prompts(1, seed=5)[0] + header
    stop = frozenset(harmony.STOP_TOKENS)
    for seed in range(3):
        params = SamplingParams(max_tokens=40, temperature=1.0, seed=seed, stop_token_ids=stop)
        free = _run(engine, prompt, params)
        constraint = harmony.JsonConstraint({"paint": schema})
        request = Request(prompt, params, harmony_prefill=len(header), constraint=constraint)
        held = [t for output in engine.submit(request) for t in output.token_ids]
        assert held[-1] == harmony.CALL and free != held
        arguments = json.loads(harmony.decode(held[:-1]))
        assert arguments["color"] in ("red", "green") and isinstance(arguments["on"], bool)
