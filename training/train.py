"""Train ossai-demo on CPU within a time budget, then export and verify it.

    python -m training.train --out runs/demo --minutes 45 --seed 0 --threads 2
    python -m training.train --out /tmp/smoke --steps 3 --data standin     # end-to-end smoke test

DIR/original/        the exported checkpoint (what `Engine.load(DIR)` and `training.package` take)
DIR/training/        state.pt (resumable with --resume), log.jsonl, vocab.json
DIR/training.json    the run's facts: command, steps, tokens, losses, parity (for `training.package`)

Before training, timed passes over the first batch (plain and in QAT mode) fix the step count that fits
`--minutes`; warmup + cosine and the final QAT phase are scheduled on it. Given the count (`--steps N`,
printed at the start) a run is deterministic for the same machine and thread count. If the machine gets
slower mid-run, the count is shortened (QAT stays at the end) so the run still ends on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ossai.config import ModelConfig
from training.export import export, verify
from training.model import DEMO_CONFIG, TrainModel


class Sample(Protocol):
    tokens: list[int]
    mask: list[bool]  # True: tokens the model must learn to produce
    category: str


SampleSource = Callable[[int, str], Iterator[Sample]]  # (seed, split) -> samples


# -- a stand-in data source (smoke tests, until and besides training.data) ------------------------------


class SimpleSample(NamedTuple):
    tokens: list[int]
    mask: list[bool]
    category: str


START, END, MESSAGE, RETURN = 200006, 200007, 200008, 200002  # harmony special tokens
STANDIN_WORDS = range(1000, 1064)
STANDIN_VOCAB = sorted({START, END, MESSAGE, RETURN, 200000, 200001, *STANDIN_WORDS})


def standin_samples(seed: int, split: str) -> Iterator[SimpleSample]:
    """Harmony-shaped copy/reverse tasks over 64 words: learnable in a few steps, for tests."""
    rng = random.Random(f"{seed}:{split}")
    while True:
        category = rng.choice(("copy", "reverse"))
        words = [rng.choice(STANDIN_WORDS) for _ in range(rng.randint(4, 40))]
        answer = words if category == "copy" else words[::-1]
        marker = 200000 if category == "copy" else 200001
        prompt = [START, marker, MESSAGE, *words, END, START, MESSAGE]
        yield SimpleSample(prompt + answer + [RETURN], [False] * len(prompt) + [True] * (len(answer) + 1),
                            category)  # fmt: skip


def data_source(name: str, max_len: int = 768) -> tuple[SampleSource, Callable[[int, int], set[int]]]:
    if name == "standin":
        return standin_samples, lambda seed, n: set(STANDIN_VOCAB)
    from training import data  # the harmony conversation generator

    # samples up to the row length (browser answers after opening a page need ~1,000-1,300 tokens)
    return (
        functools.partial(data.samples, max_tokens=max_len),
        functools.partial(data.vocabulary, max_tokens=max_len),
    )


# -- batching -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    tokens: torch.Tensor  # [B, T] global ids (pads: the first vocab id)
    mask: torch.Tensor  # [B, T] bool
    positions: torch.Tensor  # [B, T], restarting at 0 for every packed sample
    segments: torch.Tensor  # [B, T], a distinct id per sample in a row, -1 for padding
    categories: torch.Tensor  # [B, T] category index of the sample each token belongs to
    real_tokens: int


def build_batch(rows: list[list[Sample]], max_len: int, pad: int, categories: list[str]) -> Batch:
    """Lay out rows of samples; `categories` grows as new ones appear (index = category id)."""
    shape = (len(rows), max_len)
    tokens = torch.full(shape, pad, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.bool)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    cats = torch.zeros(shape, dtype=torch.long)
    real = 0
    for r, samples in enumerate(rows):
        at = 0
        for i, s in enumerate(samples):
            n = len(s.tokens)
            if s.category not in categories:
                categories.append(s.category)
            tokens[r, at : at + n] = torch.tensor(s.tokens)
            mask[r, at : at + n] = torch.tensor(s.mask)
            positions[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = i
            cats[r, at : at + n] = categories.index(s.category)
            at += n
        positions[r, at:] = torch.arange(max_len - at)  # padding: a causal segment of its own
        real += at
    return Batch(tokens, mask, positions, segments, cats, real)


class Packer:
    """Packs samples into batches of `rows` rows of `max_len` tokens: first-fit decreasing over a buffer of
    about two batches' worth of samples (a few % padding). Deterministic given the sample stream; a finite
    stream ends when its last samples are packed."""

    def __init__(
        self, source: Iterator[Sample], rows: int, max_len: int, vocab: set[int], categories: list[str]
    ):
        self.source, self.rows, self.max_len, self.vocab = source, rows, max_len, vocab
        self.categories = categories
        self.pad = min(vocab)
        self.pending: list[Sample] = []
        self.pending_tokens = 0
        self.exhausted = False
        self.truncated = self.skipped = 0
        self._peeked: Batch | None = None

    def peek(self) -> Batch:
        """The next batch, without consuming it."""
        if self._peeked is None:
            self._peeked = self._next()
        return self._peeked

    def _fill(self) -> None:
        while not self.exhausted and self.pending_tokens < 2 * self.rows * self.max_len:
            try:
                s = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            if not self.vocab.issuperset(s.tokens):
                self.skipped += 1  # an id the vocabulary missed: it has no embedding row
                continue
            if len(s.tokens) > self.max_len:
                self.truncated += 1
                s = SimpleSample(s.tokens[: self.max_len], s.mask[: self.max_len], s.category)
            self.pending.append(s)
            self.pending_tokens += len(s.tokens)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch, self._peeked = self._peeked, None
        return batch if batch is not None else self._next()

    def _next(self) -> Batch:
        self._fill()
        if not self.pending:
            raise StopIteration
        rows: list[list[Sample]] = [[] for _ in range(self.rows)]
        free = [self.max_len] * self.rows
        rest = []
        for s in sorted(self.pending, key=lambda s: -len(s.tokens)):  # stable: deterministic
            row = next((r for r in range(self.rows) if free[r] >= len(s.tokens)), None)
            if row is None:
                rest.append(s)
            else:
                rows[row].append(s)
                free[row] -= len(s.tokens)
        self.pending = rest
        self.pending_tokens = sum(len(s.tokens) for s in rest)
        return build_batch([r for r in rows if r], self.max_len, self.pad, self.categories)


def repeat(source: SampleSource, seed: int, split: str) -> Iterator[Sample]:
    """The split's samples; a finite generator starts over (another epoch)."""
    while True:
        yield from source(seed, split)


# -- schedule and steps ----------------------------------------------------------------------------------


def learning_rate(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to `floor * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: TrainModel, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Weight decay on matrices only (not norms, biases, sinks)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)


def targets(batch: Batch) -> torch.Tensor:
    """[B, T-1] bool: positions whose next token is learned (never across a packing boundary)."""
    return batch.mask[:, 1:] & (batch.segments[:, 1:] == batch.segments[:, :-1])


def forward_backward(
    model: TrainModel, batch: Batch, micro_rows: int, backward: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss over the batch's targets, `micro_rows` rows at a time (bounds activation memory: the
    backward of one micro-batch frees its graph before the next), gradients summed.

    -> (per-token losses in row-major order of `targets(batch)`, their category ids)."""
    count = max(1, int(targets(batch).sum()))
    parts = []
    for r in range(0, batch.tokens.shape[0], micro_rows):
        rows = slice(r, r + micro_rows)
        _, losses = model.loss(
            batch.tokens[rows], batch.mask[rows], batch.positions[rows], batch.segments[rows]
        )
        if backward:
            (losses.sum() / count).backward()
        parts.append(losses.detach())
    return torch.cat(parts), batch.categories[:, 1:][targets(batch)]


@torch.no_grad()
def evaluate(
    model: TrainModel, batches: list[Batch], n_categories: int, micro_rows: int
) -> tuple[float, torch.Tensor]:
    """Mean loss over the eval batches and per category (sum, count) [C, 2]."""
    model.eval()
    per = torch.zeros(n_categories, 2, dtype=torch.float64)
    for batch in batches:
        losses, cats = forward_backward(model, batch, micro_rows, backward=False)
        per[:, 0].index_add_(0, cats, losses.double())
        per[:, 1].index_add_(0, cats, torch.ones_like(losses, dtype=torch.float64))
    model.train()
    return (per[:, 0].sum() / per[:, 1].sum().clamp_min(1)).item(), per


def by_category(per: torch.Tensor, names: list[str]) -> dict[str, float]:
    """[C, 2] (loss sum, count) -> {category: mean loss} for the categories seen."""
    return {names[i]: round(per[i, 0].item() / per[i, 1].item(), 4) for i in range(len(per)) if per[i, 1] > 0}


# -- the run ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="run directory (created)")
    p.add_argument("--minutes", type=float, default=45.0, help="training-time budget (default 45)")
    p.add_argument("--steps", type=int, help="exact step count instead of the time budget (reproducible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per step (rows of --max-len)")
    p.add_argument("--max-len", type=int, default=768, help="row length; longer samples are truncated")
    p.add_argument("--micro-rows", type=int, default=5, help="rows per forward/backward (memory, speed)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=0.1, help="final learning rate, as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=100, help="warmup steps (at most a tenth of the run)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--qat", type=float, default=0.2, help="final fraction of steps with MXFP4 fake-quant")
    p.add_argument("--vocab-n", type=int, default=10000, help="n for training.data.vocabulary(seed, n)")
    p.add_argument("--eval-samples", type=int, default=64, help="held-out samples per evaluation")
    p.add_argument("--eval-split", default="heldout")
    p.add_argument("--log-every", type=int, default=25, help="steps between log lines")
    p.add_argument("--save-minutes", type=float, default=5.0, help="minutes between state checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from DIR/training/state.pt if present")
    p.add_argument("--number-init", action="store_true",
                   help="number tokens' rows start with their digits (TrainModel.numbers)")  # fmt: skip
    p.add_argument("--data", choices=("generator", "standin"), default="generator",
                   help="training.data (default) or the built-in stand-in tasks")  # fmt: skip
    args = p.parse_args(argv)
    if not 16 <= args.max_len <= 4096 or args.batch_tokens < args.max_len:
        p.error("need 16 <= --max-len <= 4096 and --batch-tokens >= --max-len")
    return args


class Run:
    """One training run: the model, its optimizer, the data and the plan, saved and resumed as a whole."""

    def __init__(
        self,
        args: argparse.Namespace,
        source: SampleSource,
        vocab: set[int],
        console: Console,
        config: ModelConfig = DEMO_CONFIG,
    ):
        self.args, self.console, self.source = args, console, source
        self.dir = args.out / "training"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vocab = sorted(vocab)
        numbers = None
        if args.number_init:
            from training.data import number_tokens

            numbers = number_tokens(self.vocab)
        self.model = TrainModel(
            config, self.vocab, max_positions=args.max_len, seed=args.seed, numbers=numbers
        )
        self.opt = make_optimizer(self.model, args.lr, args.weight_decay)
        self.categories: list[str] = []
        rows = args.batch_tokens // args.max_len
        vocab_set = set(self.vocab)
        self.packer = Packer(
            repeat(source, args.seed, "train"), rows, args.max_len, vocab_set, self.categories
        )
        self.eval_batches = self._eval_batches(source, vocab_set)
        self.step, self.total, self.elapsed, self.tokens = 0, args.steps or 0, 0.0, 0
        self.history: list[dict] = []

    def _eval_batches(self, source: SampleSource, vocab: set[int]) -> list[Batch]:
        """A fixed held-out set, packed once."""
        if self.args.eval_samples <= 0:
            return []
        try:
            stream = source(self.args.seed, self.args.eval_split)
            samples = [s for s, _ in zip(stream, range(self.args.eval_samples), strict=False)]
        except (ValueError, KeyError) as exc:
            self.console.print(f"[yellow]no eval split {self.args.eval_split!r} ({exc}); training without it")
            return []
        return list(Packer(iter(samples), self.packer.rows, self.args.max_len, vocab, self.categories))

    # -- plan ---------------------------------------------------------------------------------------
    @property
    def qat_start(self) -> int:
        return int(self.total * (1 - self.args.qat))

    @property
    def warmup(self) -> int:
        return max(1, min(self.args.warmup, self.total // 10))

    # -- state ----------------------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
            "total": self.total, "elapsed": self.elapsed, "tokens": self.tokens, "vocab": self.vocab,
            "categories": self.categories, "history": self.history,
            "args": {k: str(v) for k, v in vars(self.args).items()},
        }  # fmt: skip
        tmp = self.dir / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.dir / "state.pt")  # a crash mid-write keeps the previous state

    def resume(self) -> None:
        state = torch.load(self.dir / "state.pt", weights_only=False)
        if state["vocab"] != self.vocab:
            raise SystemExit("--resume: the vocabulary differs from the saved run's")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.total, self.elapsed = state["step"], state["total"], state["elapsed"]
        self.tokens, self.history = state["tokens"], state["history"]
        for _ in range(self.step):  # replay the packer: the same batches follow, without the compute
            next(self.packer)
        if self.categories[: len(state["categories"])] != state["categories"]:
            raise SystemExit("--resume: the data's categories differ from the saved run's")

    def log(self, record: dict) -> None:
        self.history.append(record)
        with (self.dir / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    # -- steps --------------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        lr = learning_rate(self.step, self.total, self.args.lr, self.warmup, self.args.min_lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.fake_quant = self.model.round_bf16 = self.step >= self.qat_start
        self.opt.zero_grad(set_to_none=True)
        losses, cats = forward_backward(self.model, batch, self.args.micro_rows)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip, foreach=True)
        self.opt.step()
        self.step += 1
        self.tokens += batch.real_tokens
        return losses, cats


@dataclasses.dataclass
class Window:
    """Training statistics since the last log line."""

    steps: int = 0
    loss: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    per_category: torch.Tensor = dataclasses.field(
        default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64)
    )

    def add(self, losses: torch.Tensor, cats: torch.Tensor, tokens: int, seconds: float) -> None:
        self.steps += 1
        self.loss += losses.mean().item()
        self.tokens += tokens
        self.seconds += seconds
        n = max(len(self.per_category), int(cats.max()) + 1 if len(cats) else 0)
        sums = torch.bincount(cats, weights=losses.double(), minlength=n)
        counts = torch.bincount(cats, minlength=n).double()
        self.per_category = F.pad(self.per_category, (0, 0, 0, n - len(self.per_category)))
        self.per_category += torch.stack((sums, counts), dim=1)


def train(
    args: argparse.Namespace,
    source: SampleSource,
    vocab: set[int],
    console: Console,
    config: ModelConfig = DEMO_CONFIG,
) -> Run:
    run = Run(args, source, vocab, console, config)
    if args.resume and (run.dir / "state.pt").is_file():
        run.resume()
        run.total = args.steps or run.total
        console.print(f"resumed at step {run.step}/{run.total}, {run.elapsed / 60:.1f} min in")
    c = run.model.config
    params = sum(p.numel() for p in run.model.parameters())
    console.print(
        f"model: {c.num_hidden_layers} layers, H={c.hidden_size}, {c.num_experts} experts, {len(run.vocab)} "
        f"of {c.vocab_size} vocab rows, {params / 1e6:.2f} M trainable params; {run.packer.rows} x "
        f"{args.max_len} tokens/step, {args.threads} threads"
    )
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TextColumn("{task.fields[phase]}"), TimeRemainingColumn(elapsed_when_finished=True),
    )  # fmt: skip
    if run.total == 0:
        calibrate(run, console)
    window = Window()
    step_seconds: list[float] = []
    last_save = time.monotonic()
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(
            "train", total=run.total, completed=run.step, loss=math.nan, tps=0.0, phase=""
        )
        while run.step < run.total:
            started = time.perf_counter()
            batch = next(run.packer)
            losses, cats = run.train_step(batch)
            seconds = time.perf_counter() - started
            loss = losses.mean().item()
            if not math.isfinite(loss):
                raise SystemExit(f"step {run.step}: loss is {loss}; lower --lr")
            window.add(losses, cats, batch.real_tokens, seconds)
            step_seconds.append(seconds)
            qat = run.step > run.qat_start
            tps = window.tokens / window.seconds
            progress.update(bar, completed=run.step, loss=loss, tps=tps, phase="QAT" if qat else "")
            done = run.step >= run.total
            if run.step % args.log_every == 0 or done:
                report(run, window, qat, done, progress.console)
                window = Window()
                if replan(run, step_seconds):
                    console.print(f"[yellow]behind the time plan: the run is shortened to {run.total} steps")
                    progress.update(bar, total=run.total)
            if time.monotonic() - last_save > args.save_minutes * 60:
                run.save()
                last_save = time.monotonic()
            run.elapsed += time.perf_counter() - started  # all of it: logging, evals and saves count too
    run.save()
    return run


def calibrate(run: Run, console: Console, passes: int = 3) -> None:
    """Fix the step count for the time budget from timed passes over the first batch: making it, then
    forward+backward plain (best of `passes`, after an untimed warm-up) and in QAT mode. Gradients are
    discarded, so the run that follows is exactly the `--steps N` run."""
    started = time.perf_counter()
    batch = run.packer.peek()
    make = time.perf_counter() - started

    def timed(qat: bool) -> float:
        run.model.fake_quant = run.model.round_bf16 = qat
        t = time.perf_counter()
        forward_backward(run.model, batch, run.args.micro_rows)
        run.opt.zero_grad(set_to_none=True)
        run.model.fake_quant = run.model.round_bf16 = False
        return time.perf_counter() - t

    timed(False)
    plain = make + min(timed(False) for _ in range(passes))
    qat = make + timed(True)
    run.elapsed += time.perf_counter() - started
    per_step = (1 - run.args.qat) * plain + run.args.qat * qat
    evals = 11 * len(run.eval_batches) * plain / 3  # ~10 evaluations + the final one; forward ~ 1/3 of a step
    run.total = max(1, int((run.args.minutes * 60 - run.elapsed - evals) / per_step))
    console.print(
        f"throughput ~{batch.real_tokens / plain:,.0f} tok/s ({plain:.2f} s/step, {qat:.2f} in QAT): "
        f"{run.total} steps (~{run.total * batch.real_tokens / 1e6:.1f} M tokens) fit {run.args.minutes:g} "
        f"min; QAT from step {run.qat_start}. The same run again: --steps {run.total}"
    )


def replan(run: Run, step_seconds: list[float]) -> bool:
    """Behind the time plan (a busier machine, slower QAT steps)? Shorten the run, QAT still at the end."""
    if run.args.steps or run.step >= run.total:
        return False
    recent = step_seconds[-run.args.log_every :]
    rate = sum(recent) / len(recent)
    left = run.args.minutes * 60 - run.elapsed
    if (run.total - run.step) * rate <= 1.03 * left:
        return False
    run.total = max(run.step + 1, run.step + int(left / rate))
    return True


def report(run: Run, window: Window, qat: bool, done: bool, console: Console) -> None:
    """One log line (and log.jsonl record); evaluates about ten times per run and at the end."""
    args = run.args
    lr = learning_rate(run.step - 1, run.total, args.lr, run.warmup, args.min_lr)
    record = {
        "step": run.step, "lr": lr, "loss": round(window.loss / window.steps, 4),
        "tok_s": round(window.tokens / window.seconds), "qat": qat, "minutes": round(run.elapsed / 60, 2),
        "tokens": run.tokens, "categories": by_category(window.per_category, run.categories),
    }  # fmt: skip
    every = max(1, run.total // 10)
    if run.eval_batches and (done or run.step % every < args.log_every):
        record["eval"], per = evaluate(run.model, run.eval_batches, len(run.categories), args.micro_rows)
        record["eval_categories"] = by_category(per, run.categories)
    run.log(record)
    evaluated = f" | eval {record['eval']:.3f}" if "eval" in record else ""
    categories = " ".join(f"{k} {v:.3f}" for k, v in record["categories"].items())
    console.print(
        f"step {run.step:>6} lr {lr:.2e} loss {record['loss']:.3f}{evaluated} | {categories} | "
        f"{record['tok_s']:,} tok/s{' | QAT' if qat else ''}"
    )


def build_probe(run: Run) -> Batch:
    return next(Packer(repeat(run.source, run.args.seed, "train"), 1, run.args.max_len, set(run.vocab), []))


def main(
    argv: list[str] | None = None, source: SampleSource | None = None, config: ModelConfig = DEMO_CONFIG
) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    samples, vocabulary = data_source(args.data, args.max_len)
    source = source or samples
    started = time.monotonic()
    vocab = vocabulary(args.seed, args.vocab_n)
    console.print(f"vocabulary: {len(vocab)} ids ({time.monotonic() - started:.1f} s)")
    run = train(args, source, vocab, console, config)
    if run.packer.skipped or run.packer.truncated:
        console.print(f"[yellow]data: {run.packer.skipped} samples skipped (ids outside the vocabulary), "
                      f"{run.packer.truncated} truncated to {args.max_len} tokens")  # fmt: skip
    root = export(run.model, run.vocab, args.out)
    (run.dir / "vocab.json").write_text(json.dumps(run.vocab))
    # the longest held-out sample (packing puts it first), else the first training batch's
    probe = run.eval_batches[0] if run.eval_batches else build_probe(run)
    tokens = probe.tokens[0][probe.segments[0] == 0].tolist()
    parity = verify(run.model, args.out, tokens)
    size = sum(f.stat().st_size for f in root.iterdir())
    console.print(
        f"exported {root} ({size / 2**20:.1f} MiB); ossai's Engine vs the training model on a "
        f"{len(tokens)}-token sample: max |Δlogit| {parity['max_abs']:.2e} ({parity['max_rel']:.1e} of the "
        f"largest logit), argmax agrees at {parity['argmax_agree']:.1%} of positions"
    )
    last = run.history[-1] if run.history else {}
    facts = {
        "command": "python -m training.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "steps": run.step, "tokens": run.tokens, "minutes": round(run.elapsed / 60, 2),
        "threads": args.threads, "loss": last.get("loss"), "eval_loss": last.get("eval"),
        "eval_categories": last.get("eval_categories"), "vocab_rows": len(run.vocab),
        "parity_max_abs_logit": parity["max_abs"], "parity_tokens": len(tokens), "torch": torch.__version__,
    }  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
