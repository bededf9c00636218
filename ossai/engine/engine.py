"""The Engine: loads a checkpoint and runs the model.

This is the single-sequence core (prefill, incremental decode with a KV cache, sampling); continuous
batching over a paged cache builds on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ossai.config import ModelConfig
from ossai.engine.device import default_dtype, resolve_device, set_threads
from ossai.engine.sampling import sample
from ossai.errors import BadRequest, ContextLengthError
from ossai.model.cache import KVCache
from ossai.model.transformer import Transformer
from ossai.model.weights import Checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_tokens: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise BadRequest(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise BadRequest(f"top_p must be in (0, 1], got {self.top_p}")


class Engine:
    def __init__(self, model: Transformer, checkpoint: Checkpoint, device: torch.device, threads: int):
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.threads = threads

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
    ) -> Engine:
        dev = resolve_device(device)
        n_threads = set_threads(threads)
        checkpoint = Checkpoint.open(path)
        model = Transformer(checkpoint.config, checkpoint.get, dtype or default_dtype(dev))
        if dev.type != "cpu":
            model.to(dev)
        log.info(
            "loaded %s (%s layout) on %s, %d threads", checkpoint.root, checkpoint.layout, dev, n_threads
        )
        return cls(model, checkpoint, dev, n_threads)

    def _tokens(self, token_ids: Iterable[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        if ids.ndim != 1 or ids.numel() == 0:
            raise BadRequest("token_ids must be a non-empty list of token ids")
        vocab = self.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise BadRequest(f"token ids must be in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
        if ids.numel() > self.config.max_context:
            raise ContextLengthError(f"{ids.numel()} tokens exceed the context of {self.config.max_context}")
        return ids.to(self.device)

    @torch.inference_mode()
    def logits(self, token_ids: Iterable[int]) -> torch.Tensor:
        """Logits for every position of `token_ids` (one prefill, no cache): float32 [T, vocab]."""
        ids = self._tokens(token_ids)
        return self.model.logits(self.model(ids)).cpu()

    @torch.inference_mode()
    def generate(self, prompt: Iterable[int], params: GenerationParams) -> Iterator[int]:
        """Yield generated token ids: one prefill, then one cached decode step per token.

        Stops after max_tokens or after yielding a stop token.
        """
        ids = self._tokens(prompt)
        total = ids.numel() + params.max_tokens
        if total > self.config.max_context:
            raise ContextLengthError(
                f"prompt ({ids.numel()} tokens) plus max_tokens ({params.max_tokens}) exceeds the context "
                f"of {self.config.max_context} tokens"
            )
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        cache = KVCache(self.config, total, self.model.dtype, self.device)
        positions = torch.arange(ids.numel(), device=self.device)
        hidden = self.model(ids, positions, cache)[-1:]
        for step in range(params.max_tokens):
            token = sample(self.model.logits(hidden)[0], params.temperature, params.top_p, generator)
            yield token
            if token in params.stop_tokens or step + 1 == params.max_tokens:
                return
            position = torch.tensor([ids.numel() + step], device=self.device)
            hidden = self.model(torch.tensor([token], device=self.device), position, cache)
