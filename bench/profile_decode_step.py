"""Profile one batched decode step (cProfile): where a step's time goes, kernel by kernel.

python bench/profile_decode_step.py CHECKPOINT [--streams 8] [--context 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from ossai.engine import Engine, EngineConfig, Request, SamplingParams
from ossai.engine.scheduler import Scheduled
from ossai.engine.sequence import Sequence


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--context", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engine = Engine.load(args.checkpoint, config=EngineConfig(threads=args.threads, kv_cache_mb=1024))
    runner = engine.runner
    g = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(args.streams):  # random prompts: decode tokens route to many different experts
        prompt = torch.randint(0, 199_000, (args.context,), generator=g).tolist()
        seq = Sequence(Request(prompt, SamplingParams(max_tokens=8)))
        runner.blocks.allocate(seq.tables, 0, args.context)
        runner.step([Scheduled(seq, 0, args.context)])
        runner.blocks.computed(seq.tables, seq.tokens, args.context)
        seq.num_computed = args.context
        seqs.append(seq)

    def step() -> None:
        batch = []
        for seq in seqs:
            seq.tokens.append(int(torch.randint(0, 199_000, (), generator=g)))
            runner.blocks.allocate(seq.tables, seq.num_computed, seq.num_computed + 1)
            batch.append(Scheduled(seq, seq.num_computed, 1))
        runner.step(batch)
        for seq in seqs:
            seq.num_computed += 1
            runner.blocks.computed(seq.tables, seq.tokens, seq.num_computed)

    step()
    started = time.perf_counter()
    step()
    print(f"one decode step of {args.streams} streams: {time.perf_counter() - started:.3f} s")
    profile = cProfile.Profile()
    profile.enable()
    step()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
