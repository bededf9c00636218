"""Configuration dataclasses.

`ModelConfig`'s fields are exactly the keys of gpt-oss's `original/config.json`, so the original layout
loads with `ModelConfig(**json)`. The Hugging Face layout gets one translation function
(`ModelConfig.from_hf`), not a second config class. stdlib only: the harmony and store packages import
this module without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ossai.errors import BadRequest, ModelLoadError

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

    def kv_bytes(self, context_tokens: int, dtype_bytes: int = 2) -> int:
        """KV cache of one sequence of `context_tokens`: sliding-window layers keep only their window."""
        sliding = sum(self.is_sliding(n) for n in range(self.num_hidden_layers))
        full = self.num_hidden_layers - sliding
        positions = full * context_tokens + sliding * min(context_tokens, self.sliding_window)
        return positions * 2 * self.kv_dim * dtype_bytes  # 2: keys and values

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


@dataclass(slots=True)
class SamplingParams:
    """Per-request generation settings, with OpenAI's and vLLM's semantics; validated, as user input."""

    max_tokens: int = 256
    temperature: float = 1.0  # OpenAI's recommendation for gpt-oss; 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens of the prompt and output
    seed: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    stop: tuple[str, ...] = ()  # stop strings; the text stops before them and they are not emitted
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stop_token_ids = frozenset(self.stop_token_ids)
        self.stop = tuple(s for s in self.stop if s)
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be >= 0"),
            (0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (0 <= self.top_logprobs <= 20, "top_logprobs", "must be in [0, 20]"),
            (len(self.stop) <= 16, "stop", "allows at most 16 strings"),
            (self.seed is None or -(2**63) <= self.seed < 2**64, "seed", "must fit in 64 bits"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise BadRequest(f"{name} {rule}, got {getattr(self, name)!r}")
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or not -100 <= bias <= 100:
                raise BadRequest(f"logit_bias values must be in [-100, 100], got {token}: {bias}")

    @property
    def greedy(self) -> bool:
        # below this, logits / temperature overflows to inf and softmax to NaN: the same as argmax
        return self.temperature < 1e-5


@dataclass(slots=True)
class EngineConfig:
    """How the engine runs a model: device, threads, the KV-cache budget and the batch limits."""

    device: str = "cpu"  # auto, cpu, cuda, cuda:N
    threads: int | None = None  # CPU threads; None = physical cores
    kv_cache_mb: float | None = None  # KV pool size; None = kv_cache_fraction of total memory
    kv_cache_fraction: float = 0.1
    block_size: int = 16  # tokens per KV block
    max_num_seqs: int = 32  # requests decoded together
    max_num_batched_tokens: int = 512  # tokens per step: bounds a prefill chunk so decoding never stalls
    max_model_len: int | None = None  # context limit; None = the model's (131072) or what the pool holds
    prefix_caching: bool = True
    # round the MoE experts' inputs to int8 per 32 values (llama.cpp's Q8_0): ~2x faster experts on CPUs
    # with AVX-512 VNNI + VBMI (AVX2: vpmaddubsw); logits move by ~0.01 on average; CPU only
    moe_int8: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.threads is None or self.threads >= 1, "threads", "must be at least 1"),
            (self.kv_cache_mb is None or self.kv_cache_mb > 0, "kv_cache_mb", "must be positive"),
            (0.0 < self.kv_cache_fraction < 1.0, "kv_cache_fraction", "must be in (0, 1)"),
            (self.block_size in (8, 16, 32, 64, 128), "block_size", "must be one of 8, 16, 32, 64, 128"),
            (self.max_num_seqs >= 1, "max_num_seqs", "must be at least 1"),
            (self.max_num_batched_tokens >= 16, "max_num_batched_tokens", "must be at least 16"),
            (self.max_model_len is None or self.max_model_len >= 16, "max_model_len", "must be at least 16"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise BadRequest(f"{name} {rule}, got {getattr(self, name)!r}")
        if self.moe_int8 and self.device.startswith("cuda"):
            raise BadRequest(f"moe_int8 (--moe-int8) runs on the CPU only, not on device {self.device!r}")
