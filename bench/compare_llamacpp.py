"""ossai against llama.cpp on the same random weights, CPU, one side after the other (issue 12).

    python bench/compare_llamacpp.py CHECKPOINT [--gguf OUT.gguf] [--threads 2] [--out result.json]

1. the machine's read bandwidth at 1 and N threads (a torch sum over a buffer far larger than the caches,
   best of several passes);
2. the bytes a decode token reads for the checkpoint's shape (attention, router, the active experts'
   MXFP4 blocks + scales + biases, norms, the unembedding, the KV cache at the mean decode context), so
   that every decode figure is also a fraction of the bandwidth limit (bandwidth / bytes per token);
3. `ossai bench CHECKPOINT --prompt-tokens 512 --gen-tokens 128 --threads N --concurrency 1 --json` in a
   subprocess, then the same with `--moe-int8` (the experts' inputs rounded to int8, as llama.cpp does;
   `--no-int8` skips it);
4. llama.cpp through llama-cpp-python in a second subprocess on a GGUF of the same weights (written by
   bench/gguf_export.py when missing): the same 512 prompt ids (ossai bench's), prefill timed, then 128
   greedy tokens, decode timed as ossai times it (127 steps after the first token); flash attention on,
   which is llama.cpp's own default (`auto`) on CPU but not llama-cpp-python's (`--no-flash-attn`);
5. one JSON object on stdout: every side's figures, peak RSS (each child's own, from wait4), sizes,
   bandwidth, bytes per token, fractions of the limit, ratios ossai / llama.cpp, the command and machine.

Before each side the parent reads that side's weight files once, so both start from a warm page cache.
Needs the `bench` extra (llama-cpp-python, gguf, psutil): `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ossai.store.resources import cpu_name

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python bench/compare_llamacpp.py` imports bench.gguf_export


# -- the machine -----------------------------------------------------------------------------------------


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512", "avx2", "fma", "amx")))
    except OSError:
        pass
    return []


def read_bandwidth(threads: int, gib: float = 2.0, passes: int = 6) -> float:
    """GB/s of a streaming read: sum() of a float32 buffer of `gib` GiB, best of `passes`, on `threads`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)  # touched: really resident
        best = float("inf")
        for _ in range(passes):
            started = time.perf_counter()
            buf.sum()
            best = min(best, time.perf_counter() - started)
        return buf.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- bytes per decode token ------------------------------------------------------------------------------


def decode_bytes(config, context: int) -> dict[str, int]:
    """Bytes one decode token must read, by part, for checkpoint-format weights (bf16, MXFP4 + E8M0)."""
    c = config
    h, e, i, k = c.hidden_size, c.num_experts, c.intermediate_size, c.experts_per_token
    layers = c.num_hidden_layers
    mxfp4 = 17 / 32  # bytes per weight: 16 nibble bytes + 1 scale byte per 32
    qkv = c.q_dim + 2 * c.kv_dim
    # q/k/v/out weights and biases, sinks, attention norm
    attention = (h * qkv + qkv + c.q_dim * h + h + c.num_attention_heads + h) * 2
    router = (e * h + e + h) * 2  # gate weight + bias, mlp norm
    expert = (2 * i * h + h * i) * mxfp4 + (2 * i + h) * 2  # mlp1 + mlp2 blocks+scales, biases (bf16)
    sliding = sum(c.is_sliding(n) for n in range(layers))
    kv = ((layers - sliding) * context + sliding * min(context, c.sliding_window)) * 2 * c.kv_dim * 2
    parts = {
        "attention": int(attention * layers),
        "router": int(router * layers),
        "experts": int(expert * k * layers),
        "kv_cache": int(kv),
        "unembedding": c.vocab_size * h * 2 + h * 2,
        "embedding_row": h * 2,
    }
    parts["total"] = sum(parts.values())
    return parts


# -- subprocesses ----------------------------------------------------------------------------------------


def run_child(cmd: list[str], timeout: float) -> tuple[int, str, str, float, float]:
    """(returncode, stdout, stderr, wall seconds, the child's own peak RSS in MB) of one command."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read().decode(), err.read().decode(), wall, usage.ru_maxrss / 1024


def warm_page_cache(files: list[Path]) -> float:
    """Read `files` once (so neither side pays for the disk); returns seconds."""
    started = time.perf_counter()
    for f in files:
        with f.open("rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - started


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON object in the output:\n{text[-2000:]}")


def run_ossai(checkpoint: Path, args, int8: bool = False) -> dict:
    ossai = Path(sys.executable).with_name("ossai")
    cmd = [str(ossai) if ossai.exists() else sys.executable, *([] if ossai.exists() else ["-m", "ossai.cli"])]
    cmd += ["bench", str(checkpoint), "--prompt-tokens", str(args.prompt_tokens)]
    cmd += ["--gen-tokens", str(args.gen_tokens), "--threads", str(args.threads), "--concurrency", "1"]
    cmd += ["--json", *(["--moe-int8"] if int8 else [])]
    return run_side(cmd, args.timeout, "ossai bench")


def run_side(cmd: list[str], timeout: float, what: str) -> dict:
    """One side's child process: its JSON result, with its own peak RSS, wall time and command."""
    rc, out, err, wall, rss = run_child(cmd, timeout)
    if rc != 0:
        raise RuntimeError(f"{what} failed ({rc}):\n{err[-3000:]}")
    return last_json(out) | {"child_peak_rss_mb": rss, "wall_s": wall, "command": shlex.join(cmd)}


def run_llama(gguf: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--llama-worker", str(gguf)]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    cmd += ["--threads", str(args.threads), "--n-ctx", str(args.n_ctx)]
    cmd += ["--flash-attn" if args.flash_attn else "--no-flash-attn"]
    return run_side(cmd, args.timeout, "llama.cpp worker")


def llama_worker(args) -> int:
    """In the child: load the GGUF, warm up, time the prefill of ossai bench's prompt and greedy decode."""
    import numpy as np
    from llama_cpp import Llama

    from ossai.bench import _prompt

    started = time.perf_counter()
    llm = Llama(
        model_path=str(args.llama_worker), n_ctx=args.n_ctx, n_batch=512, n_ubatch=512,
        n_threads=args.threads, n_threads_batch=args.threads, flash_attn=args.flash_attn,
        logits_all=False, verbose=False, seed=0,
    )  # fmt: skip
    load_s = time.perf_counter() - started
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    # warm-up, as ossai bench does: a 16-token prompt, 2 tokens
    llm.reset()
    llm.eval(_prompt(16, 0, n_vocab))
    llm.eval([int(last_logits().argmax())])

    prompt = _prompt(args.prompt_tokens, 1, n_vocab)  # ossai bench's single-stream prompt
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    token = int(last_logits().argmax())
    t1 = time.perf_counter()
    generated = [token]
    for _ in range(args.gen_tokens - 1):
        llm.eval([token])
        token = int(last_logits().argmax())
        generated.append(token)
    t2 = time.perf_counter()
    result = {
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "flash_attn": bool(args.flash_attn),
        "load_s": load_s,
        "prefill_tps": args.prompt_tokens / (t1 - t0),
        "decode_tps": (args.gen_tokens - 1) / (t2 - t1) if args.gen_tokens > 1 else 0.0,
        "single_ttft_ms": (t1 - t0) * 1000,
        "first_tokens": generated[:8],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))
    return 0


# -- the comparison --------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "llama-cpp-python", "gguf", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def frac(tps: float, limit: float) -> float:
    return round(tps / limit, 4) if limit else 0.0


def compare(args) -> dict:
    from ossai.model.weights import Checkpoint

    ck = Checkpoint.open(args.checkpoint)
    config = ck.config
    gguf = args.gguf or Path(str(args.checkpoint).rstrip("/") + ".gguf")
    if not gguf.exists() and not args.skip_llama:
        from bench.gguf_export import export

        print(f"writing {gguf} ...", file=sys.stderr)
        export(args.checkpoint, gguf, progress=True)

    machine = {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        **versions(),
    }
    print(
        f"machine: {machine['cpu']}, {machine['logical_cpus']} CPUs; load {load_average()}", file=sys.stderr
    )

    bandwidth = {}
    if args.bandwidth_gbs:
        bandwidth = {"given": args.bandwidth_gbs}
    else:
        for t in sorted({1, args.threads}):
            bandwidth[f"{t}_threads"] = round(read_bandwidth(t), 2)
            print(f"read bandwidth, {t} threads: {bandwidth[f'{t}_threads']} GB/s", file=sys.stderr)
    bw = bandwidth.get(f"{args.threads}_threads", bandwidth.get("given", 0.0))

    context = args.prompt_tokens + args.gen_tokens // 2  # mean context over the decode
    per_token = decode_bytes(config, context)
    limit_tps = bw * 1e9 / per_token["total"] if bw else 0.0
    kv_cache = config.kv_bytes(args.prompt_tokens + args.gen_tokens)
    sizes = {
        "checkpoint_bytes": ck.size_bytes,
        "gguf_bytes": gguf.stat().st_size if gguf.exists() else None,
        "kv_cache_bytes": kv_cache,
    }
    result: dict = {
        "checkpoint": str(args.checkpoint),
        "gguf": str(gguf),
        "shape": {
            "layers": config.num_hidden_layers,
            "experts": config.num_experts,
            "experts_per_token": config.experts_per_token,
            "hidden": config.hidden_size,
            "vocab": config.vocab_size,
        },
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "threads": args.threads,
        "machine": machine,
        "bandwidth_gbs": bandwidth,
        "decode_bytes_per_token": per_token,
        "decode_limit_tps": round(limit_tps, 3),
        "sizes": sizes,
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": load_average(),
    }

    sides = []
    if not args.skip_ossai:
        sides.append(("ossai", ck.files, lambda: run_ossai(args.checkpoint, args)))
        if args.int8:
            sides.append(("ossai_int8", ck.files, lambda: run_ossai(args.checkpoint, args, int8=True)))
    if not args.skip_llama:
        sides.append(("llama_cpp", [gguf], lambda: run_llama(gguf, args)))
    for name, files, run in sides:  # one after the other, never at once
        warm = warm_page_cache(files)
        print(
            f"{name}: page cache warmed in {warm:.0f} s; load {load_average()}; running ...", file=sys.stderr
        )
        side = run()
        side["load_after"] = load_average()
        side["decode_fraction_of_limit"] = frac(side["decode_tps"], limit_tps)
        result[name] = side
        print(
            f"{name}: prefill {side['prefill_tps']:.2f} tok/s, decode {side['decode_tps']:.3f} tok/s "
            f"({side['decode_fraction_of_limit']:.0%} of the limit), "
            f"peak RSS {side['child_peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )

    rss_budget_mb = (1.1 * ck.size_bytes + kv_cache) / 2**20
    result["rss_budget_mb"] = round(rss_budget_mb, 1)
    for key in ("ossai", "ossai_int8"):  # ratios and targets for each ossai side
        if key not in result or "llama_cpp" not in result:
            continue
        o, ll = result[key], result["llama_cpp"]
        result.setdefault("ratios", {})[key] = {
            "prefill_ossai_over_llama": round(o["prefill_tps"] / ll["prefill_tps"], 3),
            "decode_ossai_over_llama": round(o["decode_tps"] / ll["decode_tps"], 3),
            "peak_rss_ossai_over_llama": round(o["child_peak_rss_mb"] / ll["child_peak_rss_mb"], 3),
            "ossai_rss_over_checkpoint": round(o["child_peak_rss_mb"] * 2**20 / ck.size_bytes, 3),
            "llama_rss_over_gguf": round(ll["child_peak_rss_mb"] * 2**20 / sizes["gguf_bytes"], 3),
        }
        result.setdefault("targets", {})[key] = {
            "decode >= 1.0x llama.cpp": o["decode_tps"] >= ll["decode_tps"],
            "decode >= 60% of the bandwidth limit": o["decode_fraction_of_limit"] >= 0.6,
            "prefill >= 1.0x llama.cpp": o["prefill_tps"] >= ll["prefill_tps"],
            "peak RSS <= 1.1x checkpoint + KV cache": o["child_peak_rss_mb"] <= rss_budget_mb,
        }
    result["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, nargs="?", help="ossai checkpoint directory")
    parser.add_argument("--gguf", type=Path, help="the GGUF of the same weights (default: CHECKPOINT.gguf)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=1024, help="llama.cpp context (>= prompt + gen)")
    parser.add_argument(
        "--flash-attn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="llama.cpp with flash attention (llama.cpp's own default on CPU; about 2x its prefill here)",
    )
    parser.add_argument("--bandwidth-gbs", type=float, help="skip the probe; use this read bandwidth")
    parser.add_argument("--skip-ossai", action="store_true")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run ossai with --moe-int8 (llama.cpp's int8 activations for the experts)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per side")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--llama-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.llama_worker:
        return llama_worker(args)
    if args.checkpoint is None:
        parser.error("CHECKPOINT is required")
    if args.n_ctx < args.prompt_tokens + args.gen_tokens:
        parser.error("--n-ctx must hold the prompt and the generated tokens")
    result = compare(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
