"""The math of gpt-oss in plain torch: the spec every fast path is tested against.

Legend for shape comments: T = query tokens, S = key tokens, H = hidden size, K = kv heads,
G = query heads per kv head, D = head dim, E = experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ossai.config import RMS_NORM_EPS, SWIGLU_ALPHA, ModelConfig

QUERY_CHUNK = 256  # query rows per attention chunk: bounds the [T, heads, S] score tensor in prefill


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = RMS_NORM_EPS) -> torch.Tensor:
    """t * rsqrt(mean(t^2) + eps) * scale, computed in fp32 and cast back to x's dtype."""
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (t * scale.float()).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias in x's dtype; bf16 weights are upcast on the fly (the fast paths avoid that)."""
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


class Rotary:
    """YaRN-scaled rotary embedding (Peng et al. 2023, "YaRN: Efficient Context Window Extension").

    Half-split (NeoX) layout over the whole head dim. The concentration factor multiplies cos and sin, so
    q and k are each scaled by it. cos/sin tables are computed once up to `max_positions`, in fp32.
    """

    def __init__(
        self, config: ModelConfig, max_positions: int | None = None, device: torch.device | str = "cpu"
    ):
        self.config = config
        self.device = torch.device(device)
        self._cos = torch.empty(0)
        self._sin = torch.empty(0)
        concentration, inv_freq = self.concentration_and_inv_freq(config)
        self.concentration = concentration
        self.inv_freq = inv_freq.to(self.device)
        self._extend(max_positions or 4096)
        # kernels.accelerate() may set a fused op, called as kernel(x, cos, sin, positions) for fp32 x
        self.kernel: Callable[..., torch.Tensor] | None = None

    @staticmethod
    def concentration_and_inv_freq(config: ModelConfig) -> tuple[float, torch.Tensor]:
        d, base, factor = config.head_dim, config.rope_theta, config.rope_scaling_factor
        freq = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # [D/2]
        if factor <= 1.0:
            return 1.0, 1.0 / freq
        concentration = 0.1 * math.log(factor) + 1.0
        original = config.initial_context_length
        # Dims rotating fewer than beta_slow times over the original context are fully interpolated,
        # more than beta_fast times kept; not rounded (HF: truncate=false).
        low = d / 2 * math.log(original / (config.rope_ntk_beta * 2 * math.pi)) / math.log(base)
        high = d / 2 * math.log(original / (config.rope_ntk_alpha * 2 * math.pi)) / math.log(base)
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        extrapolation = 1.0 / freq
        interpolation = 1.0 / (factor * freq)
        inv_freq = interpolation * ramp + extrapolation * (1 - ramp)
        return concentration, inv_freq

    def _extend(self, n: int) -> None:
        n = min(max(n, 1), self.config.max_context)
        positions = torch.arange(n, dtype=torch.float32, device=self.device)
        angles = torch.outer(positions, self.inv_freq)  # [P, D/2]
        self._cos = angles.cos() * self.concentration
        self._sin = angles.sin() * self.concentration

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [P, D/2] (concentration folded in), extended to cover `positions` [T] int64."""
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self._cos.shape[0]:
            self._extend(max(needed, 2 * self._cos.shape[0]))
        return self._cos, self._sin

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, D]; positions: [T] int64."""
        self.tables(positions)
        if self.kernel is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return self.kernel(x, self._cos, self._sin, positions)
        cos = self._cos[positions].unsqueeze(1).to(x.dtype)  # [T, 1, D/2]
        sin = self._sin[positions].unsqueeze(1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def visible_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[T, S] bool: key s is visible to query t iff k_pos[s] <= q_pos[t] and q_pos[t] - k_pos[s] < window."""
    visible = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
    if window is not None:
        visible &= (q_pos.unsqueeze(1) - k_pos.unsqueeze(0)) < window
    return visible


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
    sm_scale: float,
) -> torch.Tensor:
    """Causal attention with learned sinks and an optional sliding window, over explicit positions.

    q: [T, K*G, D]; k, v: [S, K, D]; sinks: [K*G]; q_pos: [T]; k_pos: [S]. Returns [T, K*G*D].
    Key s is visible to query t iff k_pos[s] <= q_pos[t] and q_pos[t] - k_pos[s] < window. The sink is one
    extra logit per head with no value: it only enlarges the softmax denominator.
    Masking by positions makes this independent of how a cache stores its keys (contiguous, ring, paged).
    """
    t, n_heads, d = q.shape
    n_kv = k.shape[1]
    groups = n_heads // n_kv
    out = q.new_empty(t, n_heads * d)
    kf, vf = k.float(), v.float()
    sink = sinks.float().view(1, n_kv, groups, 1)
    for start in range(0, t, QUERY_CHUNK):
        qc = q[start : start + QUERY_CHUNK].float().view(-1, n_kv, groups, d)  # [t, K, G, D]
        qp = q_pos[start : start + QUERY_CHUNK]
        scores = torch.einsum("tkgd,skd->tkgs", qc, kf) * sm_scale  # [t, K, G, S]
        scores = scores.masked_fill(~visible_keys(qp, k_pos, window)[:, None, None, :], float("-inf"))
        logits = torch.cat((scores, sink.expand(scores.shape[0], -1, -1, -1)), dim=-1)
        weights = torch.softmax(logits, dim=-1)[..., :-1]  # drop the sink column
        ctx = torch.einsum("tkgs,skd->tkgd", weights, vf)  # [t, K, G, D]
        out[start : start + QUERY_CHUNK] = ctx.reshape(ctx.shape[0], -1).to(out.dtype)
    return out


def swiglu(h: torch.Tensor, limit: float, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    """gpt-oss's clamped SwiGLU over interleaved [gate, linear] pairs: [..., 2I] -> [..., I]."""
    glu, lin = h[..., 0::2], h[..., 1::2]
    glu = glu.clamp(max=limit)
    lin = lin.clamp(min=-limit, max=limit)
    return glu * torch.sigmoid(alpha * glu) * (lin + 1)
