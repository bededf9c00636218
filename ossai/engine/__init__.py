"""The inference engine: `Engine.load(path)`, `Engine.logits(ids)`, `Engine.generate(ids, params)`."""

from ossai.engine.engine import Engine, GenerationParams

__all__ = ["Engine", "GenerationParams"]
