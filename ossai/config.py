"""Configuration dataclasses.

`ModelConfig`'s fields are exactly the keys of gpt-oss's `original/config.json`, so the original layout
loads with `ModelConfig(**json)`. The Hugging Face layout gets one translation function
(`ModelConfig.from_hf`), not a second config class. stdlib only: the harmony and store packages import
this module without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ossai.errors import ModelLoadError

RMS_NORM_EPS = 1e-5  # not in config.json; the reference's RMSNorm default
SWIGLU_ALPHA = 1.702  # not in config.json; the reference's swiglu() default
MXFP4_BLOCK = 32  # values per E8M0 scale; MXFP4 blocks run along the reduction dim


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """gpt-oss hyper-parameters; the defaults are gpt-oss-120b's (as in the reference)."""

    num_hidden_layers: int = 36
    num_experts: int = 128
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0

    def __post_init__(self) -> None:
        positive = [f.name for f in dataclasses.fields(self) if f.name != "rope_ntk_alpha"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ModelLoadError(f"config: {name} must be positive, got {getattr(self, name)!r}")
        if self.experts_per_token > self.num_experts:
            raise ModelLoadError(
                f"config: experts_per_token ({self.experts_per_token}) exceeds "
                f"num_experts ({self.num_experts})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % MXFP4_BLOCK:
                raise ModelLoadError(f"config: {name} must be a multiple of {MXFP4_BLOCK} for MXFP4 experts")
        if self.head_dim % 2:
            raise ModelLoadError(f"config: head_dim must be even for rotary embeddings, got {self.head_dim}")

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def max_context(self) -> int:
        return int(self.initial_context_length * self.rope_scaling_factor)

    def is_sliding(self, layer: int) -> bool:
        """Even layers (0, 2, ...) use the sliding window; odd layers attend to the full context."""
        return layer % 2 == 0

    def param_count(self) -> int:
        h, e, i = self.hidden_size, self.num_experts, self.intermediate_size
        attn = h * (self.q_dim + 2 * self.kv_dim) + (self.q_dim + 2 * self.kv_dim)
        attn += self.q_dim * h + h + self.num_attention_heads + h
        mlp = h + e * h + e + e * (2 * i * h + 2 * i + h * i + h)
        return 2 * self.vocab_size * h + h + self.num_hidden_layers * (attn + mlp)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.num_hidden_layers * 2 * self.kv_dim * dtype_bytes

    # -- readers ---------------------------------------------------------------------------------
    @classmethod
    def from_original(cls, data: dict[str, Any], source: str = "config.json") -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelLoadError(f"{source}: unknown config keys {', '.join(unknown)}")
        missing = sorted(names - set(data))
        if missing:
            raise ModelLoadError(f"{source}: missing config keys {', '.join(missing)}")
        return cls(**{k: _number(source, k, v, _FIELD_TYPES[k]) for k, v in data.items()})

    @classmethod
    def from_hf(cls, data: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Translate a transformers `GptOssConfig` dict (model_type gpt_oss)."""
        unknown = sorted(set(data) - HF_KEYS)
        if unknown:
            raise ModelLoadError(f"{source}: unknown config keys {', '.join(unknown)}")
        if data.get("model_type", "gpt_oss") != "gpt_oss":
            raise ModelLoadError(f"{source}: model_type is {data.get('model_type')!r}, expected 'gpt_oss'")
        rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
        if rope.get("rope_type", "yarn") != "yarn":
            raise ModelLoadError(f"{source}: rope type {rope.get('rope_type')!r} is not supported (yarn)")
        if rope.get("truncate", False):
            raise ModelLoadError(f"{source}: rope_scaling.truncate=true is not gpt-oss's YaRN")
        sliding = data.get("sliding_window", 128)
        types = data.get("layer_types")
        n_layers = data.get("num_hidden_layers")
        if types is not None:
            expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(len(types))]
            if types != expected or len(types) != n_layers:
                raise ModelLoadError(f"{source}: layer_types must alternate sliding/full, starting sliding")
        fields = {
            "num_hidden_layers": n_layers,
            "num_experts": data.get("num_local_experts"),
            "experts_per_token": data.get("num_experts_per_tok", data.get("experts_per_token")),
            "vocab_size": data.get("vocab_size"),
            "hidden_size": data.get("hidden_size"),
            "intermediate_size": data.get("intermediate_size"),
            "swiglu_limit": data.get("swiglu_limit", 7.0),
            "head_dim": data.get("head_dim", 64),
            "num_attention_heads": data.get("num_attention_heads"),
            "num_key_value_heads": data.get("num_key_value_heads"),
            "sliding_window": sliding,
            "initial_context_length": rope.get(
                "original_max_position_embeddings", data.get("initial_context_length", 4096)
            ),
            "rope_theta": rope.get("rope_theta", data.get("rope_theta", 150000.0)),
            "rope_scaling_factor": rope.get("factor", 32.0),
            "rope_ntk_alpha": rope.get("beta_slow", 1.0),
            "rope_ntk_beta": rope.get("beta_fast", 32.0),
        }
        missing = sorted(k for k, v in fields.items() if v is None)
        if missing:
            raise ModelLoadError(f"{source}: missing config keys for {', '.join(missing)}")
        eps = data.get("rms_norm_eps", RMS_NORM_EPS)
        if not math.isclose(eps, RMS_NORM_EPS):
            raise ModelLoadError(f"{source}: rms_norm_eps={eps} differs from gpt-oss's {RMS_NORM_EPS}")
        return cls(**{k: _number(source, k, v, _FIELD_TYPES[k]) for k, v in fields.items()})

    def to_original(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf(self) -> dict[str, Any]:
        """The transformers config.json for this model, as the official HF repos ship it."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": 200002,
            "experts_per_token": self.experts_per_token,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": [
                "sliding_attention" if self.is_sliding(i) else "full_attention"
                for i in range(self.num_hidden_layers)
            ],
            "max_position_embeddings": self.max_context,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "pad_token_id": 199999,
            "quantization_config": {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
                "quant_method": "mxfp4",
            },
            "rms_norm_eps": RMS_NORM_EPS,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "transformers_version": "4.55.0.dev0",
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }


_FIELD_TYPES = {f.name: int if f.type == "int" else float for f in dataclasses.fields(ModelConfig)}

# Keys a gpt-oss config.json written by transformers (any 4.55+ or 5.x release) may hold.
HF_KEYS = frozenset(
    {
        "architectures", "attention_bias", "attention_dropout", "bos_token_id", "dtype", "eos_token_id",
        "experts_per_token", "head_dim", "hidden_act", "hidden_size", "initial_context_length",
        "initializer_range", "intermediate_size", "layer_types", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
        "num_local_experts", "output_router_logits", "pad_token_id", "quantization_config",
        "rms_norm_eps", "rope_parameters", "rope_scaling", "rope_theta", "router_aux_loss_coef",
        "sliding_window", "swiglu_limit", "tie_word_embeddings", "torch_dtype", "transformers_version",
        "use_cache", "vocab_size", "_name_or_path",
    }
)  # fmt: skip


def _number(source: str, key: str, value: Any, kind: type) -> Any:
    """Coerce a JSON number to the field's type, rejecting strings, bools and fractional ints."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelLoadError(f"{source}: {key} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ModelLoadError(f"{source}: {key} must be an integer, got {value!r}")
        return int(value)
    return float(value)
