"""ossai: run OpenAI's open-weight gpt-oss models locally.

Examples:

    ossai generate ./gpt-oss-20b --prompt "Why is the sky blue?" --effort low
    ossai generate ./gpt-oss-20b --raw --tokens 200006,17360,200008 --max-tokens 16 --json
    python -m ossai.testing.checkpoint --preset tiny --seed 0 --out /tmp/tiny   # a random test model
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Annotated

import typer

from ossai.errors import BadRequest, OssaiError

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ModelArg = Annotated[str, typer.Argument(help="checkpoint directory (Hugging Face or original/ layout)")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads (default: physical cores)")]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress to stderr")] = False):
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


def _parse_tokens(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise BadRequest(f"--tokens must be comma-separated integers, got {text!r}") from exc
    if not ids:
        raise BadRequest("--tokens is empty")
    return ids


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="prompt text")] = None,
    tokens: Annotated[str | None, typer.Option(help="prompt as comma-separated token ids")] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="plain token completion, no harmony chat format")
    ] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="tokens to generate at most")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="random seed for reproducible sampling")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Generate a completion for one prompt and print it."""
    from ossai.engine import Engine, GenerationParams

    if (prompt is None) == (tokens is None):
        raise BadRequest("give exactly one of --prompt or --tokens")
    if not raw:
        raise BadRequest("chat mode needs the harmony format; use --raw with --tokens for now")
    prompt_ids = _parse_tokens(tokens) if tokens is not None else []
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    engine = Engine.load(model, device=device, threads=threads)
    out: list[int] = []
    started = time.perf_counter()
    first = started
    for token in engine.generate(prompt_ids, params):
        if not out:
            first = time.perf_counter()
        out.append(token)
        if not as_json:
            typer.echo(str(token), nl=False)
            typer.echo(",", nl=False)
    finished = time.perf_counter()
    decode_tps = (len(out) - 1) / (finished - first) if len(out) > 1 and finished > first else 0.0
    result = {
        "tokens": out,
        "text": "",
        "prompt_tokens": len(prompt_ids),
        "prefill_tps": len(prompt_ids) / (first - started) if first > started else 0.0,
        "decode_tps": decode_tps,
    }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo("")


def main() -> None:
    try:
        app()
    except OssaiError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, traceback on request
        if os.environ.get("OSSAI_DEBUG"):
            raise
        typer.echo(
            f"error: internal error: {type(exc).__name__}: {exc} (set OSSAI_DEBUG=1 for details)", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
