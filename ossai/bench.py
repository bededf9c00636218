"""`ossai bench`: prefill, single-stream decode, batched decode and prefix-cache figures for one model.

Prompts are random token ids (distinct per stream, so the prefix cache cannot flatter the concurrency
figure), sampling is greedy with no stop token, so every stream generates exactly --gen-tokens.
`aggregate_tps` is the steady-state decode rate with all streams running (the window between the last
stream's first token and the first stream's last); `aggregate_wall_tps` divides all tokens by the wall
time, prefills included.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch

from ossai.config import SamplingParams
from ossai.engine import Engine, Request


@dataclass(slots=True)
class Timing:
    ttft: float  # seconds from submit to the first token
    total: float  # seconds from submit to the last token
    tokens: int
    times: list[float]  # when each token came, seconds from submit


def _prompt(length: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, 199_998), (length,), generator=g).tolist()


def _run(engine: Engine, prompts: list[list[int]], gen_tokens: int) -> list[Timing]:
    """Submit all prompts at once; time each stream by the engine's own output timestamps."""
    params = SamplingParams(max_tokens=gen_tokens, temperature=0.0)
    started = time.perf_counter()
    streams = [engine.submit(Request(p, params)) for p in prompts]
    timings = []
    for stream in streams:
        times = [out.created - started for out in stream if out.token_ids]
        timings.append(Timing(times[0], times[-1], len(times), times))
    return timings


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(
    engine: Engine, prompt_tokens: int, gen_tokens: int, concurrency: int = 1, prefix_tokens: int = 0
) -> dict:
    vocab = engine.config.vocab_size
    _run(engine, [_prompt(16, 0, vocab)], 2)  # warm-up: first-call allocations, thread pools

    (single,) = _run(engine, [_prompt(prompt_tokens, 1, vocab)], gen_tokens)
    decode_time = single.total - single.ttft
    result: dict = {
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "concurrency": concurrency,
        "threads": engine.threads,
        "device": str(engine.device),
        "moe_int8": engine.engine_config.moe_int8,
        "prefill_tps": prompt_tokens / single.ttft,
        "decode_tps": (single.tokens - 1) / decode_time if decode_time > 0 else 0.0,
        "single_ttft_ms": single.ttft * 1000,
    }
    started = time.perf_counter()
    many = _run(engine, [_prompt(prompt_tokens, 100 + i, vocab) for i in range(concurrency)], gen_tokens)
    wall = time.perf_counter() - started
    ttfts = [t.ttft * 1000 for t in many]
    # steady-state decode: from when the last stream got its first token until the first stream ended,
    # every stream is decoding; count the tokens made in that window
    window_start, window_end = max(t.ttft for t in many), min(t.total for t in many)
    in_window = sum(1 for t in many for x in t.times if window_start < x <= window_end)
    result |= {
        "aggregate_tps": in_window / (window_end - window_start) if window_end > window_start else 0.0,
        "aggregate_wall_tps": sum(t.tokens for t in many) / wall,  # prefills included
        "ttft_ms_p50": statistics.median(ttfts),
        "ttft_ms_p99": _percentile(ttfts, 0.99),
    }
    if result["decode_tps"]:
        result["aggregate_speedup"] = result["aggregate_tps"] / result["decode_tps"]
    if prefix_tokens:
        prompt = _prompt(prefix_tokens, 7, vocab)
        (cold,) = _run(engine, [prompt], 1)
        (warm,) = _run(engine, [prompt], 1)
        result |= {
            "prefix_tokens": prefix_tokens,
            "prefix_cold_ttft_ms": cold.ttft * 1000,
            "prefix_warm_ttft_ms": warm.ttft * 1000,
            "prefix_ttft_speedup": cold.ttft / warm.ttft,
        }
    stats = engine.stats()
    result["prefix_hit_rate"] = stats.prefix_hit_rate
    result["preemptions"] = stats.preemptions
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result
