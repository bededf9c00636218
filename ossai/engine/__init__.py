"""The inference engine: continuous batching over a paged KV cache with prefix caching.

`Engine.load(path)`, `Engine.submit(Request) -> RequestStream`, `Engine.abort(id)`, `Engine.generate(ids,
params)` (a sync convenience) and `Engine.logits(ids)` (one cache-free prefill).
"""

from ossai.config import EngineConfig, SamplingParams
from ossai.engine.engine import Engine, EngineStats, RequestStream
from ossai.engine.sequence import Output, Request, TokenConstraint, TokenLogprob

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Output",
    "Request",
    "RequestStream",
    "SamplingParams",
    "TokenConstraint",
    "TokenLogprob",
]
