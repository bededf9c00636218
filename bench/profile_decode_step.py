"""Where a decode step's time goes: the extension's kernels, the torch/Python glue around them in the
model, and the engine's own work per step (scheduling, sampling, queues).

    python bench/profile_decode_step.py CHECKPOINT [--streams 8] [--context 500] [--threads 2]
                                                   [--steps 8] [--profile] [--json] [--moe-int8]
                                                   [--fused]

1. `--streams` sequences of `--context` random tokens are prefilled straight through the runner, then
   `--steps` batched decode steps run; every call into the CPU extension is timed (each kernel returns
   only when its parallel region is done, so the sum is the time spent in kernels), the rest of
   `runner.step` is the model's glue: norms, RoPE, residual adds, KV writes, slicing, logits copy.
2. The same number of streams then decodes through the real engine (`Engine.generate` in threads,
   greedy); the engine's time per step minus its `runner.step` time is the scheduler, sampling and
   stream overhead in Python.
`--profile` adds cProfile's top functions for one step. Part 1 times the kernels one by one, so it runs the
blocks' Python path; `--fused` times the whole-block calls the engine makes instead (attention_block,
mlp_block; the glue is then what remains outside them).

    python bench/profile_decode_step.py CHECKPOINT --against OLD.cpp [--rounds 4] [--streams 1]

A paired comparison for kernel work on a noisy machine: OLD.cpp (another version of
ossai/kernels/cpu/mxfp4.cpp, e.g. `git show HEAD~1:ossai/kernels/cpu/mxfp4.cpp > /tmp/old.cpp`) is built
as a second extension and part 1 runs `--rounds` times with each build in turn, in one process on one
loaded model, so both see the same page cache and the same neighbours. Reports each round and the
medians.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import threading
import time
from collections import defaultdict
from types import SimpleNamespace

import torch

from ossai import kernels
from ossai.engine import Engine, EngineConfig, Request, SamplingParams
from ossai.engine.scheduler import Scheduled
from ossai.engine.sequence import Sequence
from ossai.kernels import cpu


def timed_kernels(engine: Engine, module=None, fused: bool = False) -> dict[str, float]:
    """Wrap every entry point of the extension (the loaded one unless `module` is given) that the model and
    runner call, and install the wrappers; returns the totals."""
    totals: dict[str, float] = defaultdict(float)

    def wrap(name, fn):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - started

        return timed

    module = module or cpu.load()
    if module is None:
        return totals
    names = ("bf16_linear", "mxfp4_linear", "moe", "paged_attention", "rms_norm", "rope")
    if fused:  # whole blocks in one call each: the kernels inside them are not timed one by one
        names += ("attention_block", "mlp_block")
    timed_module = SimpleNamespace(**{n: wrap(n, getattr(module, n)) for n in names if hasattr(module, n)})
    for attr in ("int8_path", "bf16_max_rows"):  # the build's dispatch facts, not timed
        if hasattr(module, attr):
            setattr(timed_module, attr, getattr(module, attr))
    kernels.install_cpu(engine.model, timed_module)  # the model holds closures: swap again, timed
    runner = engine.runner
    if runner.attention_kernel is not None:
        runner.attention_kernel = timed_module.paged_attention
    return totals


def runner_split(
    engine: Engine, streams: int, context: int, steps: int, profile: bool, module=None, fused: bool = False
) -> dict:
    runner = engine.runner
    g = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(streams):  # random prompts: decode tokens route to many different experts
        prompt = torch.randint(0, 199_000, (context,), generator=g).tolist()
        seq = Sequence(Request(prompt, SamplingParams(max_tokens=8)))
        runner.blocks.allocate(seq.tables, 0, context)
        runner.step([Scheduled(seq, 0, context)])
        runner.blocks.computed(seq.tables, seq.tokens, context)
        seq.num_computed = context
        seqs.append(seq)

    def step() -> float:
        batch = []
        for seq in seqs:
            seq.tokens.append(int(torch.randint(0, 199_000, (), generator=g)))
            runner.blocks.allocate(seq.tables, seq.num_computed, seq.num_computed + 1)
            batch.append(Scheduled(seq, seq.num_computed, 1))
        started = time.perf_counter()
        runner.step(batch)
        seconds = time.perf_counter() - started
        for seq in seqs:
            seq.num_computed += 1
            runner.blocks.computed(seq.tables, seq.tokens, seq.num_computed)
        return seconds

    step()  # warm: every selected expert's pages in, buffers allocated
    totals = timed_kernels(engine, module, fused)
    wall = sum(step() for _ in range(steps))
    per_kernel = dict(totals)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    in_kernels = sum(per_kernel.values())
    for seq in seqs:
        runner.blocks.free(seq.tables)
    return {
        "step_ms": round(1e3 * wall / steps, 2),
        "kernels_ms": {k: round(1e3 * v / steps, 2) for k, v in sorted(per_kernel.items())},
        "in_kernels_ms": round(1e3 * in_kernels / steps, 2),
        "glue_ms": round(1e3 * (wall - in_kernels) / steps, 2),
        "glue_fraction": round((wall - in_kernels) / wall, 4),
    }


def engine_split(engine: Engine, streams: int, context: int, tokens: int) -> dict:
    """Decode through the real engine loop; its time per step beyond runner.step is Python overhead."""
    runner = engine.runner
    in_runner, calls = [0.0], [0]
    original = runner.step

    def step(batch):
        started = time.perf_counter()
        try:
            return original(batch)
        finally:
            in_runner[0] += time.perf_counter() - started
            calls[0] += 1

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 199_000, (context,), generator=g).tolist() for _ in range(streams)]
    params = SamplingParams(max_tokens=tokens, temperature=0.0)  # no stop tokens: all `tokens`

    def run(prompt):
        list(engine.generate(prompt, params))

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    runner.step = step  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        runner.step = original  # type: ignore[method-assign]
    overhead = wall - in_runner[0]
    return {
        "steps": calls[0],
        "wall_s": round(wall, 3),
        "runner_s": round(in_runner[0], 3),
        "engine_overhead_ms_per_step": round(1e3 * overhead / max(1, calls[0]), 3),
        "engine_overhead_fraction": round(overhead / wall, 4),
    }


def build_against(source: str):
    """`source` compiled as a second extension, with the flags of the real one."""
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name="ossai_cpu_kernels_against",
        sources=[source],
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-std=c++17"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(cpu.build_dir("against")),
        verbose=False,
    )


def paired(engine: Engine, against, args: argparse.Namespace) -> dict:
    builds = {"this": cpu.load(required=True), "against": against}
    rounds: dict[str, list[dict]] = {name: [] for name in builds}
    for _ in range(args.rounds):
        for name, module in builds.items():
            rounds[name].append(
                runner_split(engine, args.streams, args.context, args.steps, False, module, args.fused)
            )

    def median(name: str, key) -> float:
        return round(statistics.median(key(r) for r in rounds[name]), 2)

    kernels_seen = sorted({k for r in rounds["this"] for k in r["kernels_ms"]})
    summary = {
        name: {
            "step_ms": median(name, lambda r: r["step_ms"]),
            **{k + "_ms": median(name, lambda r, k=k: r["kernels_ms"].get(k, 0.0)) for k in kernels_seen},
        }
        for name in builds
    }
    summary["step_ratio_this_over_against"] = round(
        summary["this"]["step_ms"] / summary["against"]["step_ms"], 3
    )
    return {"rounds": rounds, "median": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--context", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="decode steps timed in part 1")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per stream in part 2")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--against", metavar="SRC", help="another mxfp4.cpp: paired rounds against it")
    parser.add_argument("--rounds", type=int, default=4, help="paired rounds with --against")
    parser.add_argument("--moe-int8", action="store_true", help="the experts' inputs rounded to int8")
    parser.add_argument("--fused", action="store_true", help="time the whole-block calls the engine makes")
    args = parser.parse_args()
    against = build_against(args.against) if args.against else None
    engine = Engine.load(
        args.checkpoint, config=EngineConfig(threads=args.threads, kv_cache_mb=1024, moe_int8=args.moe_int8)
    )
    try:
        if against is not None:
            report = {**vars(args), **paired(engine, against, args)}
        else:
            report = {
                "checkpoint": args.checkpoint,
                "streams": args.streams,
                "context": args.context,
                "threads": args.threads,
                "engine": engine_split(engine, args.streams, args.context, args.tokens),
                "step": runner_split(
                    engine, args.streams, args.context, args.steps, args.profile, fused=args.fused
                ),
            }
    finally:
        engine.close()
    if against is not None:
        print(json.dumps(report if args.json else report["median"], indent=None if args.json else 1))
        return
    if args.json:
        print(json.dumps(report))
        return
    s, e = report["step"], report["engine"]
    print(f"decode step, {args.streams} streams at context {args.context}: {s['step_ms']} ms")
    for name, ms in s["kernels_ms"].items():
        print(f"  {name:<16}{ms:>9.2f} ms")
    print(f"  {'glue (model)':<16}{s['glue_ms']:>9.2f} ms  ({100 * s['glue_fraction']:.1f}%)")
    print(
        f"engine, beyond runner.step: {e['engine_overhead_ms_per_step']} ms per step "
        f"({100 * e['engine_overhead_fraction']:.1f}% of {e['steps']} steps)"
    )


if __name__ == "__main__":
    main()
