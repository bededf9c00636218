"""The engine benchmark of BENCHMARKS.md: a 20b-shape random checkpoint with 4 layers, `ossai bench` on it.

    python bench/engine_bench.py [--gen-tokens 128] [--concurrency 8] [--prefix-tokens 2000] [--out DIR]

Writes the checkpoint once (4.2 GB, under a minute) and prints ossai bench's JSON, plus the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from ossai.store.resources import cpu_name


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/ossai-bench-20b-4l"))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.out / "original" / "config.json").exists():
        make = [sys.executable, "-m", "ossai.testing.checkpoint", "--preset", "20b", "--layers", "4"]
        subprocess.run([*make, "--seed", "0", "--out", str(args.out)], check=True)
    command = [
        sys.executable, "-m", "ossai.cli", "bench", str(args.out),
        "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
        "--threads", str(args.threads), "--concurrency", str(args.concurrency),
        "--prefix-tokens", str(args.prefix_tokens), "--json",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["command"] = " ".join(command)
    result["machine"] = {
        "cpu": cpu_name(),
        "cores": subprocess.getoutput("nproc"),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
