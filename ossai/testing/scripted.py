"""A real engine whose token choices come from scripts: tool calls and channel structure that random
weights never produce, with everything else (rendering, KV cache, batching, parsing, streaming) real.

    engine = ScriptedEngine.load(tiny_checkpoint)
    engine.script("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi<|return|>")

Each new request takes the oldest queued script; its tokens are emitted one per step in place of
sampling. A request with no script left samples from the model as usual.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from ossai import harmony
from ossai.engine.engine import Engine
from ossai.engine.sequence import Sequence, TokenLogprob


class ScriptedEngine(Engine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._script_lock = threading.Lock()
        self._scripts: deque[list[int]] = deque()
        self._assigned: dict[str, deque[int]] = {}

    def script(self, text_or_tokens: str | list[int]) -> None:
        """Queue the completion tokens (harmony text with special tokens, or ids) for the next request."""
        if isinstance(text_or_tokens, str):
            tokens = harmony.load_encoding().encode(text_or_tokens, allowed_special="all")
        else:
            tokens = list(text_or_tokens)
        with self._script_lock:
            self._scripts.append(tokens)

    def pending_scripts(self) -> int:
        with self._script_lock:
            return len(self._scripts)

    def _choose(self, seq: Sequence, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        with self._script_lock:
            if seq.request_id not in self._assigned and seq.num_generated == 0 and self._scripts:
                self._assigned[seq.request_id] = deque(self._scripts.popleft())
            queue = self._assigned.get(seq.request_id)
            if queue:
                token = queue.popleft()
                lp = float(torch.log_softmax(logits, -1)[token]) if seq.params.logprobs else None
                return token, None if lp is None else TokenLogprob(token, lp, [])
        return super()._choose(seq, logits)
