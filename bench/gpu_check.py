"""The GPU path checked on a machine with an NVIDIA GPU: parity with transformers there, batching, speed.

    python bench/gpu_check.py --out /tmp/gpu-check [--skip-bench]

Prints one JSON object: max |Δlogit| against transformers on the same GPU in fp32 and bf16, whether
greedy continuations match, whether batched greedy output equals each request run alone, and
`ossai.bench` figures on a 20b-shape checkpoint with 4 layers (bf16 on the GPU), once with the fused
Triton MoE (`ossai.kernels.triton_moe`, what `Engine.load` installs on CUDA) and once with the reference
ops (experts dequantized one by one), in the same process. The kernels' own parity tests run there with
`pytest tests/kernels/test_triton_moe.py` (compiled for the GPU instead of interpreted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ossai import bench
from ossai.engine import Engine, EngineConfig, Request, SamplingParams
from ossai.testing.checkpoint import PRESETS, write_checkpoint


def parity(root: Path, device: str) -> dict:
    """Our GPU logits against our CPU fp32 logits, which tests/model/test_parity.py holds to within 1e-4
    of transformers (transformers itself would not run MXFP4 experts in fp32 on this GPU image)."""
    hf_dir = root / "tiny-hf"
    if not (hf_dir / "config.json").exists():
        write_checkpoint(PRESETS["tiny"], hf_dir, "hf", seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200000, (300,), generator=g).tolist()
    greedy = SamplingParams(max_tokens=32, temperature=0.0)
    cpu = Engine.load(hf_dir, config=EngineConfig(kv_cache_mb=256))
    ref = cpu.logits(ids)
    ref_gen = list(cpu.generate(ids[:110], greedy))
    cpu.close()
    out: dict = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        engine = Engine.load(hf_dir, dtype=dtype, config=EngineConfig(device=device, kv_cache_mb=256))
        ours = engine.logits(ids)
        out[name] = {
            "max_abs_logit_diff_vs_cpu_fp32": (ours - ref).abs().max().item(),
            "max_abs_logit": ref.abs().max().item(),
            "argmax_agreement": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "greedy_32_equal_to_cpu": list(engine.generate(ids[:110], greedy)) == ref_gen,
        }
        # batched greedy equals alone (8 requests of different lengths)
        prompts = [ids[i * 30 : i * 30 + 5 + 17 * i] for i in range(8)]
        params = SamplingParams(max_tokens=16, temperature=0.0)
        alone = [list(engine.generate(p, params)) for p in prompts]
        streams = [engine.submit(Request(p, params)) for p in prompts]
        together = [[t for o in s for t in o.token_ids] for s in streams]
        out[name]["batch_equals_alone"] = together == alone
        engine.close()
    return out


def speed(root: Path, device: str) -> dict:
    ckpt = root / "20b-4l"
    if not (ckpt / "original" / "config.json").exists():
        started = time.monotonic()
        config = PRESETS["20b"].__class__(**{**PRESETS["20b"].to_original(), "num_hidden_layers": 4})
        write_checkpoint(config, ckpt, "original", seed=0)
        print(f"wrote checkpoint in {time.monotonic() - started:.0f} s", file=sys.stderr)
    result = {}
    for name in ("fused_moe", "reference_moe"):  # a fresh engine each: no prefix cache carried over
        engine = Engine.load(ckpt, config=EngineConfig(device=device, kv_cache_mb=8192, max_num_seqs=32))
        if name == "reference_moe":
            for mlp in engine.model.mlp:
                mlp.mix = None
        result[name] = bench.run(engine, prompt_tokens=512, gen_tokens=64, concurrency=8, prefix_tokens=2000)
        engine.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/ossai-gpu-check"))
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    result["parity"] = parity(args.out, "cuda")
    if not args.skip_bench:
        result["bench_20b_4_layers"] = speed(args.out, "cuda")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
