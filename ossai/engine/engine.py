"""The Engine: the one public API over the model, for the server, the CLI, the clients and benchmarks.

    engine = Engine.load(path)
    stream = engine.submit(Request(prompt_ids, SamplingParams(max_tokens=64)))
    for out in stream:            # or `async for` inside asyncio
        print(out.text, end="")

One worker thread owns the model and runs the loop: take new requests and aborts, schedule a step
(continuous batching with chunked prefill over a paged KV cache), run it, sample, and hand each
request's output to its stream. `submit` and `abort` are thread-safe and never block on the model.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from ossai import kernels
from ossai.config import EngineConfig, ModelConfig, SamplingParams
from ossai.engine.device import default_dtype, resolve_device, set_threads
from ossai.engine.runner import Runner
from ossai.engine.sampling import sample
from ossai.engine.scheduler import Scheduler
from ossai.engine.sequence import Output, Request, Sequence, TokenLogprob
from ossai.errors import BadRequest, Busy, ContextLengthError
from ossai.model.transformer import Transformer
from ossai.model.weights import Checkpoint

log = logging.getLogger(__name__)

# Engines whose worker thread is running: stopped before the interpreter tears down torch, which would
# otherwise abort the process ("terminate called without an active exception") mid-step.
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_LIVE):
        engine.close()


class RequestStream:
    """The outputs of one request, iterable from plain code or from asyncio (whichever submitted it).

    Leaving the iteration early (break, close, task cancellation) aborts the request."""

    def __init__(self, engine: Engine, request_id: str):
        self.engine = engine
        self.request_id = request_id
        self.finished = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._async_queue: asyncio.Queue[Output] = asyncio.Queue()
        except RuntimeError:
            self._loop = None
        self._queue: queue.SimpleQueue[Output] = queue.SimpleQueue()

    def put(self, output: Output) -> None:
        """Called from the engine's worker thread."""
        if self._loop is None:
            self._queue.put(output)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_queue.put_nowait, output)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.engine.abort(self.request_id)

    def __iter__(self) -> Iterator[Output]:
        if self._loop is not None:
            raise RuntimeError("this stream was submitted from asyncio: use `async for`")
        try:
            while not self.finished:
                output = self._queue.get()
                self.finished = output.finished
                yield output
        finally:
            if not self.finished:
                self.engine.abort(self.request_id)

    async def __aiter__(self) -> AsyncIterator[Output]:
        if self._loop is None:
            raise RuntimeError("this stream was submitted outside asyncio: iterate it with `for`")
        try:
            while not self.finished:
                output = await self._async_queue.get()
                self.finished = output.finished
                yield output
        finally:
            if not self.finished:
                self.engine.abort(self.request_id)


T = TypeVar("T")


def on_own_thread(fn: Callable[[], T]) -> T:
    """fn() on a short-lived thread. A thread that runs a parallel torch op keeps an OpenMP team for as long
    as it lives, and with more team threads than cores libgomp spins ~100 times instead of ~300,000 before
    a worker sleeps: every kernel of every step then paid a wake-up (a tiny model's decode step 3.2 ->
    11.5 ms). Loading and the KV pools' allocation run here, so the engine's worker owns the only team."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ossai-build") as pool:
        return pool.submit(fn).result()


@dataclass(slots=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float  # fraction of KV blocks held by requests
    kv_blocks: int
    prefix_hit_rate: float  # prompt tokens served from cache / prompt tokens
    prompt_tokens: int
    generated_tokens: int
    preemptions: int
    max_model_len: int


class Engine:
    def __init__(
        self,
        model: Transformer,
        checkpoint: Checkpoint | None,
        device: torch.device,
        threads: int,
        config: EngineConfig | None = None,
    ):
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.threads = threads
        self.engine_config = config or EngineConfig(device=str(device), threads=threads)
        self._runner: Runner | None = None
        self._create_lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._cond = threading.Condition()
        self._incoming: list[tuple[Sequence, RequestStream]] = []
        self._aborts: set[str] = set()
        self._streams: dict[str, RequestStream] = {}
        self._seqs: dict[str, Sequence] = {}
        self._worker: threading.Thread | None = None
        self._closed = False
        self._prompt_tokens = 0
        self._generated_tokens = 0

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        dtype: torch.dtype | None = None,
        config: EngineConfig | None = None,
    ) -> Engine:
        if config is not None:
            device, threads = config.device, config.threads if threads is None else threads
        dev = resolve_device(device)
        moe_int8 = config is not None and config.moe_int8
        if moe_int8 and dev.type != "cpu":
            raise BadRequest(f"moe_int8 (--moe-int8) runs on the CPU only, not on device {str(dev)!r}")
        n_threads = set_threads(threads)

        def build() -> tuple[Checkpoint, Transformer]:
            checkpoint = Checkpoint.open(path)
            model = Transformer(checkpoint.config, checkpoint.get, dtype or default_dtype(dev), moe_int8)
            if dev.type != "cpu":
                model.to(dev)
            kernels.accelerate(model, dev)
            return checkpoint, model

        checkpoint, model = on_own_thread(build)
        log.info(
            "loaded %s (%s layout) on %s, %d threads", checkpoint.root, checkpoint.layout, dev, n_threads
        )
        return cls(model, checkpoint, dev, n_threads, config)

    # -- the paged engine, created on first use ----------------------------------------------------------
    @property
    def runner(self) -> Runner:
        # under a lock: the first requests of a server arrive together, and two runners (each with its own
        # KV pools and block manager) meant blocks allocated in one and freed in the other
        with self._create_lock:
            if self._runner is None:
                runner = on_own_thread(lambda: Runner(self.model, self.engine_config, self.device))
                self._scheduler = Scheduler(
                    runner.blocks,
                    self.engine_config.max_num_seqs,
                    self.engine_config.max_num_batched_tokens,
                )
                self._runner = runner
            return self._runner

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    # -- public API --------------------------------------------------------------------------------------
    def check_tokens(self, token_ids: Iterable[int]) -> list[int]:
        ids = list(token_ids)
        if not ids:
            raise BadRequest("the prompt is empty")
        vocab = self.config.vocab_size
        bad = next((t for t in ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise BadRequest(f"token ids must be integers in [0, {vocab}), got {bad!r}")
        return ids

    @torch.inference_mode()
    def logits(self, token_ids: Iterable[int]) -> torch.Tensor:
        """Logits for every position of `token_ids` (one prefill, no cache): float32 [T, vocab]."""
        ids = self.check_tokens(token_ids)
        if len(ids) > self.config.max_context:
            raise ContextLengthError(
                f"{len(ids)} tokens exceed the model's context of {self.config.max_context}"
            )
        tokens = torch.tensor(ids, device=self.device)
        return self.model.logits(self.model(tokens)).cpu()

    def submit(self, request: Request) -> RequestStream:
        """Queue a request; its outputs arrive on the returned stream. Bad input raises BadRequest."""
        request.prompt = self.check_tokens(request.prompt)
        total = len(request.prompt) + request.params.max_tokens
        if total > self.max_model_len:
            raise ContextLengthError(
                f"prompt ({len(request.prompt)} tokens) plus max_tokens ({request.params.max_tokens}) "
                f"exceeds the context of {self.max_model_len} tokens"
            )
        stream = RequestStream(self, request.request_id)
        with self._cond:
            if self._closed:
                raise Busy("the engine is shutting down")
            if request.request_id in self._streams:
                raise BadRequest(f"request id {request.request_id} is already running")
            self._streams[request.request_id] = stream
            self._incoming.append((Sequence(request), stream))
            if self._worker is None:
                self._worker = threading.Thread(target=self._run_worker, name="ossai-engine", daemon=True)
                self._worker.start()
                _LIVE.add(self)
            self._cond.notify()
        return stream

    def abort(self, request_id: str) -> None:
        with self._cond:
            if request_id in self._streams:
                self._aborts.add(request_id)
                self._cond.notify()

    def generate(self, prompt: Iterable[int], params: SamplingParams) -> Iterator[int]:
        """Token ids of one request as they come (a convenience over submit); closing it aborts."""
        for output in self.submit(Request(list(prompt), params)):
            yield from output.token_ids

    def stats(self) -> EngineStats:
        runner, scheduler = self.runner, self._scheduler
        assert scheduler is not None
        with self._cond:
            return EngineStats(
                running=len(scheduler.running),
                waiting=len(scheduler.waiting) + len(self._incoming),
                kv_usage=runner.blocks.usage(),
                kv_blocks=runner.blocks.full.num_blocks + runner.blocks.sliding.num_blocks,
                prefix_hit_rate=runner.blocks.hit_rate,
                prompt_tokens=self._prompt_tokens,
                generated_tokens=self._generated_tokens,
                preemptions=scheduler.preemptions,
                max_model_len=runner.max_model_len,
            )

    def close(self) -> None:
        """Abort everything and stop the worker (waits for the step in flight)."""
        with self._cond:
            self._closed = True
            self._aborts.update(self._streams)
            self._cond.notify()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=60)
        _LIVE.discard(self)

    # -- the worker ----------------------------------------------------------------------------------------
    def _run_worker(self) -> None:
        try:
            self._loop()
        except BaseException:  # never leave a stream waiting on a dead worker
            log.exception("engine worker died")
            with self._cond:
                self._closed = True
                incoming, self._incoming = self._incoming, []
            self._fail_all([seq for seq, _ in incoming], "the worker stopped")
            raise

    def _fail_all(self, extra: list[Sequence], reason: str) -> None:
        for seq in [*self._seqs.values(), *extra]:
            seq.finish_reason = "error"
            self._finish(seq, seq.output(text=f"[engine error: {reason}]"))

    def _loop(self) -> None:
        scheduler = self._scheduler
        assert scheduler is not None
        while True:
            with self._cond:
                while not (self._incoming or self._aborts or scheduler.has_work() or self._closed):
                    self._cond.wait()
                incoming, self._incoming = self._incoming, []
                aborts, self._aborts = self._aborts, set()
                if self._closed and not incoming and not aborts and not scheduler.has_work():
                    return
            for seq, _ in incoming:
                self._seqs[seq.request_id] = seq
                self._prompt_tokens += seq.num_prompt
                scheduler.add(seq)
            for request_id in aborts:
                seq = self._seqs.get(request_id)
                if seq is not None:
                    self._finish(seq, seq.abort())
            try:
                self._step(scheduler)
            except Exception as exc:  # a bug or out of memory: fail what is in flight, keep serving
                log.exception("engine step failed")
                self._fail_all([], f"{type(exc).__name__}: {exc}")

    def _step(self, scheduler: Scheduler) -> None:
        batch = scheduler.schedule()
        if not batch:
            return
        logits = self.runner.step(batch)
        row = 0
        for item in batch:
            scheduler.computed(item)
            if not item.samples:
                continue
            seq = item.seq
            try:
                token, logprob = self._choose(seq, logits[row])
                output = seq.append(token)
            except Exception as exc:  # one request's sampling or output failed: fail it alone
                log.exception("request %s failed", seq.request_id)
                seq.finish_reason = "error"
                self._finish(seq, seq.output(text=f"[engine error: {type(exc).__name__}: {exc}]"))
                row += 1
                continue
            row += 1
            self._generated_tokens += 1
            if logprob is not None:
                output.logprobs = [logprob]
            if output.finished:
                self._finish(seq, output)
            else:
                self._streams[seq.request_id].put(output)

    def _choose(self, seq: Sequence, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """The next token of `seq` from its logits (the seam a scripted test engine replaces)."""
        allowed = seq.constraint.allowed() if seq.constraint is not None else None
        return sample(logits, seq.params, seq.generator, seq.tokens, seq.counts, allowed)

    def _finish(self, seq: Sequence, output: Output) -> None:
        assert self._scheduler is not None
        self._scheduler.finish(seq)
        self._seqs.pop(seq.request_id, None)
        with self._cond:
            stream = self._streams.pop(seq.request_id, None)
        if stream is not None:
            stream.put(output)
