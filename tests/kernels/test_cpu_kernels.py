"""The CPU extension against its plain-torch references (ossai.model), and the swap into the engine."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch

from ossai import kernels as kernels_pkg
from ossai.config import SWIGLU_ALPHA
from ossai.engine import Engine, EngineConfig, Request, SamplingParams
from ossai.engine.scheduler import Scheduled
from ossai.engine.sequence import Sequence
from ossai.kernels import cpu
from ossai.model import layers, mxfp4, transformer
from tests.kernels.conftest import moe_block


@pytest.fixture(scope="module", params=list(cpu.ISA_FLAGS))
def kernels(request):
    """The extension built for each instruction-set path (AVX-512, AVX2, portable C++), so every path is
    checked here whatever CPU a user has. make test installs a compiler and ninja: building must work."""
    return cpu.load(required=True, isa=request.param)


@pytest.mark.parametrize("moe_int8", [False, True])
def test_whole_block_calls_equal_the_kernels_one_by_one(tiny, moe_int8):
    """attention_block and mlp_block run the kernels in the model's order: the logits of batched decode
    steps (three streams, one of them past the sliding window) are bit-identical to the Python path."""
    engine = Engine.load(tiny, config=EngineConfig(prefix_caching=False, moe_int8=moe_int8))
    runner = engine.runner
    took = []  # attention blocks that ran whole (not fallen back)
    for block in engine.model.attn:
        block.fused = (lambda f: lambda *a: took.append((r := f(*a)) is not None) or r)(block.fused)

    def decode() -> list[torch.Tensor]:
        seqs = [Sequence(Request(list(range(500, 500 + n)), SamplingParams())) for n in (3, 70, 130)]
        for seq in seqs:  # prefill each alone
            n = len(seq.tokens)
            runner.blocks.allocate(seq.tables, 0, n)
            first = runner.step([Scheduled(seq, 0, n)])
            seq.num_computed = n
            runner.blocks.computed(seq.tables, seq.tokens, n)
            seq.tokens.append(int(first[0].argmax()))
        steps = []
        for _ in range(12):  # then decode together, each feeding back its greedy token
            batch = [Scheduled(seq, seq.num_computed, 1) for seq in seqs]
            for seq in seqs:
                runner.blocks.allocate(seq.tables, seq.num_computed, seq.num_computed + 1)
            logits = runner.step(batch)
            steps.append(logits)
            for seq, row in zip(seqs, logits, strict=True):
                seq.num_computed += 1
                runner.blocks.computed(seq.tables, seq.tokens, seq.num_computed)
                seq.tokens.append(int(row.argmax()))
        for seq in seqs:
            runner.blocks.free(seq.tables)
        return steps

    whole = decode()
    # every layer of the 12 decode steps and of the 3-token prefill (too short for the GEMM prefill path)
    assert sum(took) == 13 * len(engine.model.attn)
    for block in [*engine.model.attn, *engine.model.mlp]:
        block.fused = None
    assert all(torch.equal(a, b) for a, b in zip(decode(), whole, strict=True))
    engine.close()


def _python_ran_during(call) -> int:
    """How often this thread ran Python while `call` ran in another one, away from its ends by 10 ms (ten
    switch intervals; at either end the other thread runs Python itself): 0 when the call holds the GIL."""
    window: dict[str, float] = {}

    def run() -> None:
        window["start"] = time.perf_counter()
        call()
        window["end"] = time.perf_counter()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        worker = threading.Thread(target=run)
        stamps = []
        worker.start()
        while worker.is_alive():
            stamps.append(time.perf_counter())
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert window["end"] - window["start"] > 0.03, "the call is too short to tell"
    return sum(window["start"] + 0.01 < t < window["end"] - 0.01 for t in stamps)


def test_whole_block_calls_release_the_gil():
    """A decode step is almost all attention_block and mlp_block: holding the GIL through them would stall
    the server's event loop for the whole step (the registration is the same for every ISA build)."""
    kernels = cpu.load(required=True)
    mlp = moe_block(8, 512, 512, seed=0)
    args = (
        torch.randn(1024, 512), mlp.norm_scale, 1e-5, mlp.gate_weight, mlp.gate_bias, mlp.top_k,
        mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales, mlp.mlp1_bias, mlp.mlp2_weight_blocks,
        mlp.mlp2_weight_scales, mlp.mlp2_bias, mlp.limit, SWIGLU_ALPHA, False,
    )  # fmt: skip
    assert _python_ran_during(lambda: kernels.mlp_block(*args)) >= 10
    hidden, heads, kv_heads, d, keys = 256, 32, 2, 64, 100_000  # one query row over many keys
    g = torch.Generator().manual_seed(0)
    angles = torch.outer(torch.arange(keys, dtype=torch.float32), torch.rand(d // 2, generator=g))
    last = torch.tensor([keys - 1])
    args = (
        torch.randn(1, hidden, generator=g), torch.ones(hidden), 1e-5,
        torch.randn((heads + 2 * kv_heads) * d, hidden, generator=g).bfloat16(),
        torch.zeros((heads + 2 * kv_heads) * d), heads, kv_heads,
        torch.randn(hidden, heads * d, generator=g).bfloat16(), torch.zeros(hidden), angles.cos(),
        angles.sin(), last, torch.randn(keys, kv_heads, d, generator=g),
        torch.randn(keys, kv_heads, d, generator=g), last, torch.zeros(heads), torch.tensor([0, 1]),
        torch.arange(keys), torch.arange(keys), torch.tensor([0, keys]), 0, 0.125,
    )  # fmt: skip
    assert _python_ran_during(lambda: kernels.attention_block(*args)) >= 10


@pytest.mark.parametrize(
    ("rows", "out_features", "in_features"),
    [(1, 64, 64), (7, 96, 128), (16, 5760, 2880), (3, 33, 32), (9, 35, 64), (5, 7, 2912), (1, 9, 96)],
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_mxfp4_linear_matches_reference(kernels, rows, out_features, in_features, with_bias, int8):
    """int8: x rounded to int8 per block on both sides (the MoE's int8 product); 2912 and 96 columns leave
    part-filled chunks of 4 blocks and groups of 16."""
    g = torch.Generator().manual_seed(rows * out_features)
    blocks = torch.randint(0, 256, (out_features, in_features // 32, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(110, 135, (out_features, in_features // 32), dtype=torch.uint8, generator=g)
    bias = torch.randn(out_features, generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, in_features, generator=g)
    x[0, :32] = 0.0  # a block of zeros: scale 0
    ref = transformer.mxfp4_linear(mxfp4.round_to_int8_blocks(x) if int8 else x, blocks, scales, bias)
    got = kernels.mxfp4_linear(x, blocks, scales, bias, int8)
    assert got.shape == ref.shape
    # same products, fp32 sums in another order
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_mxfp4_linear_takes_strided_rows_and_rejects_bad_shapes(kernels):
    blocks = torch.randint(0, 256, (8, 2, 16), dtype=torch.uint8)
    scales = torch.full((8, 2), 127, dtype=torch.uint8)
    x = torch.randn(64, 5)[:, ::1].t().contiguous()[:, :64]  # [5, 64]
    x = torch.cat([x, x], dim=1)[:, ::2]  # non-contiguous view [5, 64]
    assert torch.allclose(
        kernels.mxfp4_linear(x, blocks, scales, None),
        transformer.mxfp4_linear(x, blocks, scales, None),
        atol=1e-5,
    )
    with pytest.raises(RuntimeError, match="columns"):
        kernels.mxfp4_linear(torch.randn(2, 32), blocks, scales, None)
    with pytest.raises(RuntimeError, match="float32"):
        kernels.mxfp4_linear(torch.randn(2, 64).bfloat16(), blocks, scales, None)


@pytest.mark.parametrize("moe_int8", [False, True])
def test_engine_uses_the_kernel_and_greedy_output_is_unchanged(tiny, moe_int8):
    assert cpu.load(required=True) is not None
    # prefix caching off: the reference recomputes everything
    engine = Engine.load(tiny, config=EngineConfig(prefix_caching=False, moe_int8=moe_int8))
    assert all(m.int8_activations == moe_int8 for m in engine.model.mlp)
    assert engine.runner.attention_kernel is not None and engine.runner.prefill_attention is not None
    experts = engine.model.mlp[0].mxfp4_linear
    assert experts is not transformer.mxfp4_linear and all(
        m.mxfp4_linear is experts for m in engine.model.mlp
    )
    assert engine.model.dense is not layers.linear and all(
        a.dense is engine.model.dense for a in engine.model.attn
    )
    assert all(m.mix is not None for m in engine.model.mlp)
    assert engine.model.rotary.kernel is not None and all(
        a.norm is not layers.rms_norm for a in engine.model.attn
    )
    assert all(a.qkv is not None for a in engine.model.attn)  # the original layout stores qkv fused
    assert all(b.fused is not None for b in [*engine.model.attn, *engine.model.mlp])  # whole-block calls
    prompt = list(range(1000, 1100))
    params = SamplingParams(max_tokens=64, temperature=0.0)
    fast = list(engine.generate(prompt, params))
    for m in engine.model.mlp:
        m.mxfp4_linear, m.dense, m.mix = transformer.mxfp4_linear, layers.linear, None  # the reference
        m.fused = None
    for module in [*engine.model.attn, *engine.model.mlp, engine.model]:
        module.dense, module.norm = layers.linear, layers.rms_norm
    engine.model.rotary.kernel = None
    for a in engine.model.attn:
        a.qkv = a.fused = None
    engine.runner.attention_kernel = engine.runner.prefill_attention = None  # `layers.attention` per sequence
    if not moe_int8:
        reference = list(engine.generate(prompt, params))
        engine.close()
        assert fast == reference
        return
    # Rounding activations to int8 is discontinuous: a last-bit difference upstream (another summation
    # order, decode vs prefill) can move a value across a rounding step and a logit by ~1e-2, so two
    # int8 runs may part at a near-tie. What holds: every token the kernels chose is, teacher-forced
    # through the plain-torch ops, the reference's best or within that of it.
    logits = engine.logits(prompt + fast)[len(prompt) - 1 : -1]
    engine.close()
    gaps = logits.max(dim=1).values - logits[torch.arange(len(fast)), torch.tensor(fast)]
    assert len(fast) == 64 and float(gaps.max()) < 0.05, gaps.max()


@pytest.mark.parametrize(
    ("rows", "out_features", "in_features"),
    [
        *[(1, 7, 64), (5, 300, 1000), (16, 2048, 2880), (9, 301, 40), (2, 5, 8), (1, 301, 1000), (1, 21, 40)],
        (41, 67, 1000),  # prefill rows: 4 x 6 tiles and a tail of 5
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_linear_matches_reference(kernels, rows, out_features, in_features, with_bias):
    g = torch.Generator().manual_seed(rows + out_features)
    weight = torch.randn(out_features, in_features, generator=g).bfloat16()
    bias = torch.randn(out_features, generator=g).bfloat16() if with_bias else None
    x = torch.randn(rows, in_features, generator=g)
    ref = layers.linear(x, weight, bias)
    got = kernels.bf16_linear(x, weight, bias)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.bf16_linear(x, weight.t(), None)


@pytest.mark.parametrize(
    ("rows", "experts", "hidden", "intermediate"),
    [
        (1, 8, 64, 64),
        (7, 8, 96, 64),
        (16, 32, 64, 128),
        (3, 4, 2880, 2880),
        (5, 128, 64, 32),
        (300, 8, 128, 64),  # a prefill chunk: weights decoded once per tile
        (2, 4, 2912, 544),  # int8: 91 blocks (a part-filled chunk and 16-block group), mlp2 17 blocks
    ],
)
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_moe_matches_reference_block(kernels, rows, experts, hidden, intermediate, int8):
    """The fused block (router, top-4 softmax, experts with bias and clamped SwiGLU, weighted sum) against
    MLPBlock.route + MLPBlock.experts on the plain-torch ops; with int8, both round the experts' inputs to
    int8 per 32 values (`mxfp4.round_to_int8_blocks`), and the kernel multiplies in integers."""
    mlp = moe_block(experts, hidden, intermediate, seed=rows * experts)
    mlp.int8_activations = int8
    t = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(rows))
    ref = mlp.reference_mix(t)
    got = kernels.moe(
        t, mlp.gate_weight, mlp.gate_bias, mlp.top_k, mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales,
        mlp.mlp1_bias, mlp.mlp2_weight_blocks, mlp.mlp2_weight_scales, mlp.mlp2_bias, mlp.limit, SWIGLU_ALPHA,
        int8,
    )  # fmt: skip
    assert got.shape == ref.shape and got.dtype == torch.float32
    # int8: the SwiGLU output is computed in another order on each side before it is rounded, so an element
    # may land one int8 step apart, which moves outputs by up to ~0.6% of the largest in these shapes (the
    # product itself is held to fp32 rounding in test_mxfp4_linear_matches_reference)
    bound = 1e-2 if int8 else 1e-4
    assert torch.allclose(got, ref, rtol=1e-4, atol=bound * ref.abs().max().item())


@pytest.mark.parametrize("threads", [3, 5])
def test_products_shared_among_threads_cover_every_row(kernels, threads):
    """Decode products give each thread a contiguous share and let a thread that finishes early take chunks
    from the back of the others' shares: with more threads than cores (here) shares finish unevenly and
    chunks are taken from both ends; every output must be computed once and right."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        weight = torch.randn(1001, 320, generator=g).bfloat16()
        x = torch.randn(1, 320, generator=g)
        for _ in range(5):
            got = kernels.bf16_linear(x, weight, None)
            ref = layers.linear(x, weight)
            assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        mlp = moe_block(16, 64, 96, seed=threads)
        t = torch.randn(3, 64, generator=g)
        ref = mlp.reference_mix(t)
        got = kernels.moe(
            t, mlp.gate_weight, mlp.gate_bias, mlp.top_k, mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales,
            mlp.mlp1_bias, mlp.mlp2_weight_blocks, mlp.mlp2_weight_scales, mlp.mlp2_bias, mlp.limit,
            SWIGLU_ALPHA, False,
        )  # fmt: skip
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("rows", "hidden"), [(1, 2880), (7, 64), (130, 96)])
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float32])
def test_rms_norm_matches_reference(kernels, rows, hidden, scale_dtype):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, hidden, generator=g) * 3
    scale = (1 + 0.2 * torch.randn(hidden, generator=g)).to(scale_dtype)
    got = kernels.rms_norm(x, scale, 1e-5)
    assert torch.allclose(got, layers.rms_norm(x, scale), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="scale"):
        kernels.rms_norm(x, scale[:-1], 1e-5)


@pytest.mark.parametrize(("tokens", "heads"), [(1, 64), (1, 8), (9, 3)])
def test_rope_matches_reference(kernels, tiny, tokens, heads):
    """At positions past the table's first 4096 (the reference extends it) and scattered ones."""
    from ossai.model.weights import Checkpoint

    rotary = layers.Rotary(Checkpoint.open(tiny).config)
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, heads, rotary.config.head_dim, generator=g)
    positions = torch.randint(0, 5000, (tokens,), generator=g)
    expected = rotary(x, positions)  # extends the tables to cover the positions
    got = kernels.rope(x, rotary._cos, rotary._sin, positions)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="outside the rotary table"):
        kernels.rope(x, rotary._cos, rotary._sin, positions + rotary._cos.shape[0])


def test_moe_rejects_bad_shapes(kernels):
    mlp = moe_block(8, 64, 64, seed=0)
    args = [mlp.gate_weight, mlp.gate_bias, 4, mlp.mlp1_weight_blocks, mlp.mlp1_weight_scales, mlp.mlp1_bias,
            mlp.mlp2_weight_blocks, mlp.mlp2_weight_scales, mlp.mlp2_bias, 7.0, SWIGLU_ALPHA]  # fmt: skip
    with pytest.raises(RuntimeError, match="gate_weight"):
        kernels.moe(torch.randn(2, 32), *args)
    with pytest.raises(RuntimeError, match="top_k"):
        kernels.moe(torch.randn(2, 64), *args[:2], 9, *args[3:])
    assert kernels.moe(torch.randn(0, 64), *args).shape == (0, 64)


@pytest.mark.parametrize(
    ("queries", "window", "kv_heads", "groups", "d"),
    [
        ([(1, 1)], None, 1, 1, 64),  # the first token of a sequence
        ([(1, 300), (1, 129), (1, 128), (1, 5)], 128, 8, 8, 64),  # decode, around the window's edge
        ([(7, 140), (1, 60)], 128, 2, 4, 64),  # a chunk of 7 crossing the window, next to a decode
        ([(1000, 1000)], None, 1, 2, 64),  # a 1,000-token prompt
        ([(1000, 1000)], 128, 2, 2, 64),
        ([(3, 10), (2, 200), (1, 33)], None, 4, 1, 64),
        ([(1, 300), (2, 40)], 128, 2, 4, 48),  # another head dim: the generic loop, not the 64-wide path
    ],
)
def test_paged_attention_matches_reference(kernels, queries, window, kv_heads, groups, d):
    """Each sequence = (its new query rows, its length); keys sit at scattered pool slots, as blocks do.
    The kernel over all sequences at once against layers.attention per sequence."""
    g = torch.Generator().manual_seed(len(queries) * 31 + kv_heads)
    heads = kv_heads * groups
    total = sum(length for _, length in queries)
    pool_slots = total + 50
    k_pool = torch.randn(pool_slots, kv_heads, d, generator=g)
    v_pool = torch.randn(pool_slots, kv_heads, d, generator=g)
    sinks = torch.randn(heads, generator=g).bfloat16()
    perm = torch.randperm(pool_slots, generator=g)
    q_rows, q_pos, slots, pos, ref = [], [], [], [], []
    used = 0
    for rows, length in queries:
        seq_slots = perm[used : used + length]
        used += length
        first = 0 if window is None else max(0, length - rows - window + 1)  # what the runner passes
        key_slots, key_pos = seq_slots[first:], torch.arange(first, length)
        q = torch.randn(rows, heads, d, generator=g) * 2
        qp = torch.arange(length - rows, length)
        ref.append(
            layers.attention(q, k_pool[key_slots], v_pool[key_slots], sinks, qp, key_pos, window, 0.125)
        )
        q_rows.append(q), q_pos.append(qp), slots.append(key_slots), pos.append(key_pos)
    offsets = lambda parts: torch.tensor([0, *torch.tensor([len(p) for p in parts]).cumsum(0).tolist()])  # noqa: E731
    got = kernels.paged_attention(
        torch.cat(q_rows), k_pool, v_pool, sinks, torch.cat(q_pos), offsets(q_rows), torch.cat(slots),
        torch.cat(pos), offsets(slots), window or 0, 0.125,
    )  # fmt: skip
    expected = torch.cat(ref)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_paged_attention_rejects_slots_outside_the_pool(kernels):
    pool = torch.randn(4, 1, 64)
    one = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="outside the pool"):
        kernels.paged_attention(
            torch.randn(1, 1, 64), pool, pool, torch.zeros(1), torch.tensor([0]), one, torch.tensor([9]),
            torch.tensor([0]), one, 0, 0.125,
        )  # fmt: skip


def test_consecutive_rows_joins_adjacent_slices_only():
    qkv = torch.randn(10, 4).bfloat16()
    q, k, v = qkv[:6], qkv[6:8], qkv[8:]
    joined = kernels_pkg.consecutive_rows(q, k, v)
    assert joined is not None and joined.data_ptr() == qkv.data_ptr() and torch.equal(joined, qkv)
    bias = torch.randn(10)
    assert torch.equal(kernels_pkg.consecutive_rows(bias[:6], bias[6:8], bias[8:]), bias)
    assert kernels_pkg.consecutive_rows(q, v, k) is None  # out of order
    assert kernels_pkg.consecutive_rows(q, k.clone(), v) is None  # separate tensors (the HF layout)
    buffer = bytearray(80)  # three tensors over one buffer: back to back, but each its own storage
    rows = [(6, 0), (2, 48), (2, 64)]
    apart = [
        torch.frombuffer(buffer, dtype=torch.bfloat16, count=4 * n, offset=at).view(n, 4) for n, at in rows
    ]
    assert apart[1].data_ptr() == apart[0].data_ptr() + 48
    assert kernels_pkg.consecutive_rows(*apart) is None


@pytest.mark.parametrize(
    ("queries", "prefix", "window"),
    [(300, 0, None), (300, 0, 128), (33, 0, None), (100, 200, None), (100, 200, 128), (64, 1000, 128)],
)
def test_prefill_attention_matches_reference(queries, prefix, window):
    """Flash-attention with the sink folded in through its log-sum-exp, against `layers.attention`: a fresh
    prompt, a chunk after a cached prefix, and the sliding window cutting into the prefix."""
    attend = kernels_pkg.prefill_attention(torch.device("cpu"))
    assert attend is not None  # torch 2.13 has the op; without it the runner keeps the paged kernel
    g = torch.Generator().manual_seed(queries + prefix)
    kv_heads, groups, d = 2, 4, 64
    first = max(0, prefix - window + 1) if window else 0
    q_pos = torch.arange(prefix, prefix + queries)
    k_pos = torch.arange(first, prefix + queries)
    q = torch.randn(queries, kv_heads * groups, d, generator=g)
    k = torch.randn(len(k_pos), kv_heads, d, generator=g)
    v = torch.randn(len(k_pos), kv_heads, d, generator=g)
    sinks = torch.randn(kv_heads * groups, generator=g)
    ref = layers.attention(q, k, v, sinks, q_pos, k_pos, window, 0.125)
    got = attend(q, k, v, sinks, q_pos, k_pos, window, 0.125)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
