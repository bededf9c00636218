"""A trainable gpt-oss: the math of `ossai.model.transformer`, batched over [B, T] and differentiable.

Same network as the reference (pre-norm RMSNorm, GQA attention with learned sinks and a 128-token band on
even layers, YaRN RoPE via `Rotary`, top-k router with a softmax over the selected logits, clamped
interleaved SwiGLU with the +1, biased experts), but with dense fp32 parameters and two differences that
only change the cost, never the function:

- Restricted vocabulary: embedding/unembedding rows exist only for `vocab` (the ids the data uses). The
  exported checkpoint has zero rows for every other id, so their logits are exactly 0 at inference and the
  full-vocabulary softmax is the softmax over the used rows plus a constant `log(N_unused)` term.
- Packing: several samples may share a row; each restarts its positions at 0 and attention never crosses
  samples. Sliding-window layers compute only the band of scores that can be nonzero.

`fake_quant` rounds expert weights to MXFP4 in the forward (straight-through gradient) and `round_bf16`
rounds every other weight to bf16: with both on, the forward is the exported checkpoint's.

Legend: B = batch rows, T = tokens per row, N = B*T, H = hidden, E = experts, I = intermediate,
V = used vocab rows, K = kv heads, G = query heads per kv head, D = head dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ossai.config import MXFP4_BLOCK, ModelConfig
from ossai.model.layers import Rotary, rms_norm, swiglu
from ossai.model.mxfp4 import BYTES_PER_BLOCK, FP4_VALUES, SCALE_BIAS

DEMO_CONFIG = ModelConfig(
    num_hidden_layers=4, num_experts=8, experts_per_token=4, vocab_size=201088, hidden_size=128,
    intermediate_size=256, swiglu_limit=7.0, head_dim=64, num_attention_heads=4, num_key_value_heads=1,
    sliding_window=128, initial_context_length=4096, rope_theta=150000.0, rope_scaling_factor=32.0,
    rope_ntk_alpha=1.0, rope_ntk_beta=32.0,
)  # fmt: skip

# -- MXFP4 -------------------------------------------------------------------------------------------

FP4_MAX = 6.0
_MAGNITUDES = torch.tensor(FP4_VALUES[:8])  # E2M1 code 0..7 -> magnitude
_MIDPOINTS = (_MAGNITUDES[1:] + _MAGNITUDES[:-1]) / 2  # decision boundaries between neighbouring codes


def mxfp4_round(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floats [..., K] (K a multiple of 32) -> (E2M1 codes uint8 [..., K], exponents int32 [..., K/32]).

    Per block of 32 along K, the scale is the smallest power of two 2^e with max|w| / 2^e <= 6 (so nothing
    saturates); each value then rounds to the nearest E2M1 magnitude, ties to the even code (OCP's RNE).
    """
    *lead, k = weight.shape
    if k % MXFP4_BLOCK:
        raise ValueError(f"last dim {k} is not a multiple of {MXFP4_BLOCK}")
    w = weight.detach().float().reshape(*lead, k // MXFP4_BLOCK, MXFP4_BLOCK)
    amax = w.abs().amax(dim=-1)
    # ceil(log2(amax / 6)) exactly, via frexp (amax/6 = m * 2^p with m in [0.5, 1)): no log2 rounding
    mantissa, power = torch.frexp(amax / FP4_MAX)
    exponent = (power - (mantissa == 0.5).int()).clamp(-SCALE_BIAS, SCALE_BIAS)
    scaled = (w.abs() / torch.exp2(exponent.float()).unsqueeze(-1)).contiguous()
    mids = _MIDPOINTS.to(w.device)
    code = torch.bucketize(scaled, mids)  # x == boundary -> the lower code ...
    tie = (scaled == mids[code.clamp(max=len(mids) - 1)]) & (code % 2 == 1)
    code = code + tie.long()  # ... unless that one is odd: ties go to the even code
    code = code | ((w < 0).long() << 3)
    return code.to(torch.uint8).reshape(*lead, k), exponent.int()


def mxfp4_value(codes: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """Inverse of `mxfp4_round`: codes [..., K], exponents [..., K/32] -> fp32 [..., K] (exact)."""
    *lead, k = codes.shape
    lut = torch.tensor(FP4_VALUES, device=codes.device)
    values = lut[codes.long()].view(*lead, k // MXFP4_BLOCK, MXFP4_BLOCK)
    return (values * torch.exp2(exponents.float()).unsqueeze(-1)).reshape(*lead, k)


def mxfp4_pack(codes: torch.Tensor, exponents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (blocks uint8 [..., K/32, 16], scales uint8 [..., K/32]) as the checkpoint stores them:
    in byte j of a block the low nibble is element 2j, the high nibble element 2j+1; scale = e + 127."""
    *lead, k = codes.shape
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exponents + SCALE_BIAS).to(torch.uint8)
    return blocks.reshape(*lead, k // MXFP4_BLOCK, BYTES_PER_BLOCK).contiguous(), scales


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floats [..., K] -> MXFP4 (blocks [..., K/32, 16], scales [..., K/32]) for `mxfp4.dequantize`."""
    return mxfp4_pack(*mxfp4_round(weight))


def fake_quant(weight: torch.Tensor) -> torch.Tensor:
    """MXFP4 quantize -> dequantize with a straight-through gradient (QAT)."""
    return weight + (mxfp4_value(*mxfp4_round(weight)) - weight).detach()


def round_bf16(weight: torch.Tensor) -> torch.Tensor:
    """Round to the nearest bf16 value with a straight-through gradient."""
    return weight + (weight.detach().bfloat16().float() - weight.detach())


# -- the network -------------------------------------------------------------------------------------

WeightFn = Callable[[torch.Tensor], torch.Tensor]  # parameter -> the value the forward uses (rounded or not)


def _softmax_with_sink(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim plus one extra logit per head (sinks [K, G]; scores [B, K, G, ...]) that
    has no value: it only enlarges the denominator, so the weights may sum to less than 1."""
    sink = sinks.view(1, *sinks.shape, *([1] * (scores.dim() - 3))).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    positions: torch.Tensor,
    segments: torch.Tensor,
    sm_scale: float,
    chunk: int = 128,
) -> torch.Tensor:
    """Causal attention within segments. q [B, K, G, T, D]; k, v [B, K, 1, T, D] -> [B, K, G, T, D].

    Queries go in chunks, each against the keys from the earliest start of a segment it holds (row index
    minus position: positions count up from 0 within a segment) to its own end, which skips the scores that
    are masked anyway: the upper triangle and the earlier samples of a packed row."""
    t = q.shape[3]
    index = torch.arange(t, device=positions.device)
    starts = (index - positions).clamp(min=0)  # [B, T]
    out = []
    for lo in range(0, t, chunk):
        hi = min(t, lo + chunk)
        first = int(starts[:, lo:hi].min())
        pos_q, pos_k = positions[:, lo:hi, None], positions[:, None, first:hi]
        visible = (segments[:, lo:hi, None] == segments[:, None, first:hi]) & (pos_k <= pos_q)  # [B, t, s]
        scores = (q[:, :, :, lo:hi] @ k[:, :, :, first:hi].transpose(-1, -2)) * sm_scale  # [B, K, G, t, s]
        scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
        out.append(_softmax_with_sink(scores, sinks) @ v[:, :, :, first:hi])
    return torch.cat(out, dim=3)


def band_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    positions: torch.Tensor,
    segments: torch.Tensor,
    window: int,
    sm_scale: float,
) -> torch.Tensor:
    """`causal_attention` restricted to the last `window` positions, computed only where it can be nonzero:
    queries in chunks of C = window, each against the C + window keys that end with the chunk (3x fewer
    scores than [T, T] at T = 768). Shapes as `dense_attention`."""
    b, kv, g, t, d = q.shape
    c = window
    pad = -t % c  # T up to a multiple of C: padded queries are dropped, padded keys are invisible
    n = (t + pad) // c
    q = F.pad(q, (0, 0, 0, pad)).view(b, kv, g, n, c, d)
    # keys of chunk j: [j*C - window, (j+1)*C), i.e. `window` zero keys in front, then windows of C + window
    kw = F.pad(k, (0, 0, window, pad)).unfold(3, c + window, c).transpose(-1, -2)  # [B, K, 1, n, C+W, D]
    vw = F.pad(v, (0, 0, window, pad)).unfold(3, c + window, c).transpose(-1, -2)
    seg_k = F.pad(segments, (window, pad), value=-2).unfold(1, c + window, c)  # [B, n, C+W]; -2: no key
    pos_k = F.pad(positions, (window, pad)).unfold(1, c + window, c)
    seg_q = F.pad(segments, (0, pad), value=-3).view(b, n, c, 1)
    pos_q = F.pad(positions, (0, pad)).view(b, n, c, 1)
    delta = pos_q - pos_k[:, :, None]  # [B, n, C, C+W]
    visible = (seg_q == seg_k[:, :, None]) & (delta >= 0) & (delta < window)
    scores = (q @ kw.transpose(-1, -2)) * sm_scale  # [B, K, G, n, C, C+W]
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    out = _softmax_with_sink(scores, sinks) @ vw  # [B, K, G, n, C, D]
    return out.reshape(b, kv, g, n * c, d)[:, :, :, :t]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        c = config
        qkv = c.q_dim + 2 * c.kv_dim
        self.norm_scale = nn.Parameter(torch.ones(c.hidden_size))
        self.qkv_weight = nn.Parameter(torch.empty(qkv, c.hidden_size))  # rows: [q | k | v]
        self.qkv_bias = nn.Parameter(torch.zeros(qkv))
        self.sinks = nn.Parameter(torch.zeros(c.num_attention_heads))
        self.out_weight = nn.Parameter(torch.empty(c.hidden_size, c.q_dim))
        self.out_bias = nn.Parameter(torch.zeros(c.hidden_size))
        self.config = c
        self.window = c.sliding_window if c.is_sliding(layer) else None
        self.sm_scale = 1.0 / math.sqrt(c.head_dim)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor, w: WeightFn, rotary: Rotary
    ) -> torch.Tensor:
        """x [B, T, H]; positions, segments [B, T]: attention stays within a segment."""
        c = self.config
        kv, g = c.num_key_value_heads, c.num_attention_heads // c.num_key_value_heads
        b, n = x.shape[:2]
        t = rms_norm(x, w(self.norm_scale))
        q, k, v = F.linear(t, w(self.qkv_weight), w(self.qkv_bias)).split((c.q_dim, c.kv_dim, c.kv_dim), -1)
        flat = positions.reshape(-1)
        q = rotary(q.reshape(b * n, c.num_attention_heads, c.head_dim), flat)
        k = rotary(k.reshape(b * n, kv, c.head_dim), flat)
        q = q.view(b, n, kv, g, c.head_dim).permute(0, 2, 3, 1, 4)  # [B, K, G, T, D]
        k = k.view(b, n, kv, 1, c.head_dim).permute(0, 2, 3, 1, 4)  # [B, K, 1, T, D]
        v = v.reshape(b, n, kv, 1, c.head_dim).permute(0, 2, 3, 1, 4)
        sinks = w(self.sinks).view(kv, g)
        if self.window is None:
            ctx = causal_attention(q, k, v, sinks, positions, segments, self.sm_scale)
        else:
            ctx = band_attention(q, k, v, sinks, positions, segments, self.window, self.sm_scale)
        ctx = ctx.permute(0, 3, 1, 2, 4).reshape(b, n, c.q_dim)  # [B, T, K*G*D]
        return x + F.linear(ctx, w(self.out_weight), w(self.out_bias))


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        e, h, i = c.num_experts, c.hidden_size, c.intermediate_size
        self.norm_scale = nn.Parameter(torch.ones(h))
        self.gate_weight = nn.Parameter(torch.empty(e, h))
        self.gate_bias = nn.Parameter(torch.zeros(e))
        self.mlp1_weight = nn.Parameter(torch.empty(e, 2 * i, h))  # rows interleave [gate, linear]
        self.mlp1_bias = nn.Parameter(torch.zeros(e, 2 * i))
        self.mlp2_weight = nn.Parameter(torch.empty(e, h, i))
        self.mlp2_bias = nn.Parameter(torch.zeros(e, h))
        self.config = c

    def forward(self, x: torch.Tensor, w: WeightFn, experts: WeightFn) -> torch.Tensor:
        c = self.config
        a = c.experts_per_token
        t = rms_norm(x, w(self.norm_scale)).reshape(-1, c.hidden_size)  # [N, H]
        logits = F.linear(t, w(self.gate_weight), w(self.gate_bias))  # [N, E]
        top, idx = torch.topk(logits, a, dim=-1, sorted=True)
        weights = torch.softmax(top, dim=-1).reshape(-1)  # [N*A]
        # group the N*A (token, expert) pairs by expert: one GEMM pair per expert over its tokens
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=c.num_experts).tolist()
        rows = order // a  # token of each pair, in expert order
        w1, b1 = experts(self.mlp1_weight), w(self.mlp1_bias)
        w2, b2 = experts(self.mlp2_weight), w(self.mlp2_bias)
        outs = []
        for e, chunk in enumerate(t.index_select(0, rows).split(counts)):  # (index_select: cheaper grad)
            hid = swiglu(F.linear(chunk, w1[e], b1[e]), c.swiglu_limit)  # [n, 2I] -> [n, I]
            outs.append(F.linear(hid, w2[e], b2[e]))  # [n, H]
        y = torch.cat(outs) * weights.index_select(0, order).unsqueeze(1)
        return x + torch.zeros_like(t).index_add(0, rows, y).view_as(x)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MoE(config)


NUMBER_DIMS = 7  # cos/sin on three circles + magnitude


def number_code(values: torch.Tensor) -> torch.Tensor:
    """[n] integers 0..999 -> [n, NUMBER_DIMS]: (cos, sin) of 2 pi v / T for T = 10, 100, 1000; v/500 - 1."""
    parts = []
    for period in (10, 100, 1000):
        angle = 2 * math.pi * values / period
        parts += [angle.cos(), angle.sin()]
    return torch.stack([*parts, values / 500 - 1], dim=1)


class TrainModel(nn.Module):
    """gpt-oss with embedding/unembedding rows for `vocab` only. Parameter names mirror the original
    layout's tensor names (`block.N.attn.qkv_weight` <-> `block.N.attn.qkv.weight`)."""

    def __init__(
        self,
        config: ModelConfig,
        vocab: Sequence[int],
        max_positions: int = 4096,
        seed: int = 0,
        numbers: dict[int, int] | None = None,
    ):
        super().__init__()
        self.numbers = numbers or {}  # global id -> the integer the token spells, for `number_features`
        ids = sorted(set(vocab))
        if not ids or ids[0] < 0 or ids[-1] >= config.vocab_size:
            raise ValueError(f"vocab ids must lie in [0, {config.vocab_size})")
        if len(ids) >= config.vocab_size:
            raise ValueError("the restricted vocabulary must leave some ids unused")
        self.config = config
        self.vocab = ids
        h = config.hidden_size
        self.embedding = nn.Parameter(torch.empty(len(ids), h))
        self.norm_scale = nn.Parameter(torch.ones(h))
        self.unembedding = nn.Parameter(torch.empty(len(ids), h))
        self.block = nn.ModuleList(Block(config, n) for n in range(config.num_hidden_layers))
        local = torch.full((config.vocab_size,), -1, dtype=torch.long)
        local[torch.tensor(ids)] = torch.arange(len(ids))
        self.register_buffer("local_id", local, persistent=False)  # global id -> row, -1 if unused
        self.register_buffer("vocab_ids", torch.tensor(ids), persistent=False)  # row -> global id
        # the constant in the full softmax: N_unused zero logits contribute N_unused * e^0
        self.log_unused = math.log(config.vocab_size - len(ids))
        self.rotary = Rotary(config, max_positions)
        self.fake_quant = False  # experts through MXFP4 (QAT)
        self.round_bf16 = False  # every other weight through bf16, as exported
        # param -> (its version, MXFP4 value - param): requantize only after the optimizer changed it, not
        # for every micro-batch of a step
        self._quant_cache: dict[int, tuple[int, torch.Tensor]] = {}
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Linear weights ~ N(0, 1/fan_in), residual outputs scaled by 1/sqrt(2 L) (GPT-2), embedding
        ~ N(0, 1), unembedding small so the first logits sit near 0 (loss ~ log 201088)."""
        g = torch.Generator().manual_seed(seed)
        layers = self.config.num_hidden_layers
        for name, p in self.named_parameters():
            if name.endswith(("norm_scale",)):
                p.fill_(1.0)
            elif name.endswith(("bias", "sinks")):
                p.zero_()
            elif name == "embedding":
                p.copy_(torch.randn(p.shape, generator=g))
            elif name == "unembedding":
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                if self.numbers:
                    self._number_features(g)
            else:
                std = 1.0 / math.sqrt(p.shape[-1])
                if name.endswith(("out_weight", "mlp2_weight")):
                    std /= math.sqrt(2 * layers)
                p.copy_(torch.randn(p.shape, generator=g) * std)

    @torch.no_grad()
    def _number_features(self, g: torch.Generator) -> None:
        """Write each number token's value into the first dims of its embedding and unembedding row.

        o200k spells every integer as pieces of 1-3 digits, each its own token, so "13" and "14" start
        as unrelated random rows: the model must learn each number's meaning, and to copy each one, from
        the few samples that show it. The value's phase on circles of period 10, 100 and 1000 (one per
        digit) plus a magnitude dim gives every number row the same code in both matrices, so copying a
        number is one shared linear map and sums are rotations; the remaining dims stay random. Other
        rows are zero in these dims, which keeps the subspace for numbers. Only the start differs: the
        network and the checkpoint are the usual ones."""
        rows = [(int(self.local_id[i]), v) for i, v in self.numbers.items() if self.local_id[i] >= 0]
        if not rows or self.config.hidden_size < NUMBER_DIMS:
            return
        index = torch.tensor([r for r, _ in rows])
        code = number_code(torch.tensor([v for _, v in rows], dtype=torch.float32))
        for p, scale in ((self.embedding, 2.0), (self.unembedding, 0.5)):
            p[:, :NUMBER_DIMS] = 0.0
            p[index, :NUMBER_DIMS] = scale * code

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global token ids -> row indices; raises on ids outside the vocabulary."""
        rows = self.local_id[tokens]
        if bool((rows < 0).any()):
            bad = tokens[rows < 0][0].item()
            raise ValueError(f"token {bad} is not in the model's vocabulary")
        return rows

    def _dense(self, p: torch.Tensor) -> torch.Tensor:
        return round_bf16(p) if self.round_bf16 else p

    def _experts(self, p: torch.Tensor) -> torch.Tensor:
        if not self.fake_quant:
            return self._dense(p)
        cached = self._quant_cache.get(id(p))
        if cached is None or cached[0] != p._version:
            with torch.no_grad():
                cached = p._version, mxfp4_value(*mxfp4_round(p)) - p
            self._quant_cache[id(p)] = cached
        return p + cached[1]  # straight-through: the MXFP4 value forward, identity backward

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens [B, T] global ids -> final hidden states [B, T, H] (before the final norm).

        Samples packed into a row restart `positions` at 0 and carry distinct `segments` ids; attention never
        crosses a segment. Defaults: one sample per row at positions 0..T-1."""
        b, n = tokens.shape
        if positions is None:
            positions = torch.arange(n, device=tokens.device).expand(b, n)
        if segments is None:
            segments = torch.zeros_like(tokens)
        x = F.embedding(self.local(tokens), self._dense(self.embedding))  # [B, T, H]
        for block in self.block:
            x = block.attn(x, positions, segments, self._dense, self.rotary)
            x = block.mlp(x, self._dense, self._experts)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> logits over the used rows [..., V]; every other id's logit is exactly 0."""
        return F.linear(rms_norm(hidden, self._dense(self.norm_scale)), self._dense(self.unembedding))

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., vocab_size], what the exported checkpoint computes."""
        used = self.logits(hidden)
        out = used.new_zeros(*used.shape[:-1], self.config.vocab_size)
        out[..., self.vocab_ids] = used
        return out

    def token_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the full-vocabulary softmax, from the used rows only.

        hidden [M, H] at the positions that predict; targets [M] global ids -> losses [M]."""
        logits = self.logits(hidden)  # [M, V]
        unused = logits.new_full((logits.shape[0], 1), self.log_unused)
        lse = torch.logsumexp(torch.cat((logits, unused), dim=-1), dim=-1)
        return lse - logits.gather(1, self.local(targets).unsqueeze(1)).squeeze(1)

    def loss(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token loss where `mask` [B, T] is True (position t-1 predicts token t).

        -> (mean loss, per-token losses [M] in row-major order of the True positions of mask[:, 1:])."""
        hidden = self(tokens, positions, segments)
        target = mask[:, 1:]
        if segments is not None:  # never predict across a packing boundary
            target = target & (segments[:, 1:] == segments[:, :-1])
        where = target.reshape(-1).nonzero().squeeze(1)  # row-major positions that predict
        predicting = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, where)
        losses = self.token_losses(predicting, tokens[:, 1:].reshape(-1)[where])
        return losses.mean(), losses
