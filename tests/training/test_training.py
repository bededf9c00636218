"""ossai-demo training: the MXFP4 quantizer, the training model against ossai's reference `Transformer` on its
own export, the restricted-vocabulary loss, and the CLI end to end (train, checkpoint, resume, export).

Parity runs on the demo config and on a tiny one with GQA over 2 kv heads (the demo has 1); both have 4
layers, so the band (even layers) and the full attention are checked past the 128-token window.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ossai.config import ModelConfig
from ossai.engine import Engine
from ossai.model import mxfp4
from training import train
from training.export import export, exported_logits
from training.model import (
    DEMO_CONFIG,
    NUMBER_DIMS,
    TrainModel,
    fake_quant,
    mxfp4_pack,
    mxfp4_value,
    number_code,
    quantize,
)

TINY = ModelConfig(
    num_hidden_layers=4, num_experts=4, experts_per_token=2, vocab_size=201088, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
VOCAB = sorted({*range(1000, 1300), *range(199998, 200020)})
FP32_TOL = 1e-4  # same math from the same bf16/MXFP4 weights: only summation order differs (~1e-5 seen)


def _sequence(length: int, seed: int = 0) -> list[int]:
    return random.Random(seed).choices(VOCAB, k=length)


@pytest.fixture(scope="module", params=[TINY, DEMO_CONFIG], ids=["tiny", "demo"])
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainModel, Path, Engine]:
    """A randomly initialised model with every parameter made to matter, exported and loaded."""
    model = TrainModel(request.param, VOCAB, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("norm_scale"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        model.unembedding.mul_(50)  # logits of a few units, not ~0
    out = tmp_path_factory.mktemp("export")
    export(model, VOCAB, out)
    engine = Engine.load(out, threads=torch.get_num_threads())
    yield model, out, engine
    engine.close()


# -- MXFP4 ------------------------------------------------------------------------------------------------


def test_quantizer_round_trips_representable_values():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (6, 4, 32), dtype=torch.uint8, generator=g)
    codes[codes == 8] = 0  # -0 and +0 are the same value; keep the codes comparable
    codes[..., 5] = 15  # a -6 in every block, so the block's scale is the one it was made with
    exponents = torch.randint(-30, 30, (6, 4), dtype=torch.int32, generator=g)
    values = mxfp4_value(codes.view(6, 128), exponents)
    blocks, scales = quantize(values)
    assert blocks.shape == (6, 4, 16) and scales.shape == (6, 4)
    assert torch.equal(mxfp4.dequantize(blocks, scales), values)
    assert torch.equal(blocks, mxfp4_pack(codes.view(6, 128), exponents)[0])
    # nibble order: element 2j is byte j's low nibble
    assert (blocks[0, 0, 0] & 0x0F).item() == codes[0, 0, 0].item()
    assert (blocks[0, 0, 0] >> 4).item() == codes[0, 0, 1].item()


def test_quantizer_picks_the_tight_scale_and_the_nearest_value():
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    w[0, :32] = 0.0  # an all-zero block
    blocks, scales = quantize(w)
    got = mxfp4.dequantize(blocks, scales)
    scale = torch.exp2(scales.float() - mxfp4.SCALE_BIAS)  # [8, 8]
    amax = w.view(8, 8, 32).abs().amax(-1)
    live = amax > 0
    assert (amax / scale <= 6).all() and (amax[live] / (scale[live] / 2) > 6).all()
    candidates = torch.tensor(mxfp4.FP4_VALUES) * scale.repeat_interleave(32, -1)[..., None]
    nearest = (candidates - w[..., None]).abs().amin(-1)
    assert torch.equal((got - w).abs(), nearest)
    assert torch.equal(got, mxfp4.dequantize(*mxfp4.quantize(w)))  # ossai's own test quantizer agrees


def test_fake_quant_is_straight_through_and_requantizes_after_updates():
    model = TrainModel(TINY, VOCAB, seed=0)
    model.fake_quant = True
    p = model.block[0].mlp.mlp1_weight
    weight = torch.randn(p.shape)
    (model._experts(p) * weight).sum().backward()
    assert torch.equal(p.grad, weight)  # identity gradient
    assert torch.equal(model._experts(p).detach(), fake_quant(p).detach())
    with torch.no_grad():
        p.mul_(3)  # as an optimizer step would: the cached quantization must not be reused
    assert torch.equal(model._experts(p).detach(), fake_quant(p).detach())


# -- parity with ossai's reference ------------------------------------------------------------------------


def test_forward_matches_ossai_reference(exported):
    model, _, engine = exported
    tokens = _sequence(200)  # past the 128-token window; T is not a multiple of the band's chunk
    ref = engine.logits(tokens)
    ours = exported_logits(model, tokens)
    assert ref.shape == ours.shape == (200, model.config.vocab_size)
    unused = torch.ones(model.config.vocab_size, dtype=torch.bool)
    unused[VOCAB] = False
    assert torch.equal(ref[:, unused], torch.zeros_like(ref[:, unused]))  # zero rows: logit exactly 0
    assert ref[:, VOCAB].abs().max() > 1.0
    diff = (ours - ref).abs().max().item()
    assert diff < FP32_TOL, f"max |Δlogit| {diff}"


def test_packed_rows_equal_separate_sequences(exported):
    model, _, _ = exported
    a, b = _sequence(150, 1), _sequence(90, 2)
    row = torch.tensor([a + b + [VOCAB[0]] * 16])
    positions = torch.tensor([[*range(150), *range(90), *range(16)]])
    segments = torch.tensor([[0] * 150 + [1] * 90 + [-1] * 16])
    with torch.no_grad():
        packed = model(row, positions, segments)[0]
        alone_a, alone_b = model(torch.tensor([a]))[0], model(torch.tensor([b]))[0]
    torch.testing.assert_close(packed[:150], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[150:240], alone_b, atol=1e-5, rtol=0)


def test_restricted_loss_equals_full_vocabulary_cross_entropy(exported):
    model, _, engine = exported
    tokens = _sequence(160, 3)
    mask = torch.tensor([i % 3 != 0 for i in range(160)])
    model.fake_quant = model.round_bf16 = True  # the exported model's forward
    try:
        with torch.no_grad():
            loss, losses = model.loss(torch.tensor([tokens]), mask[None])
    finally:
        model.fake_quant = model.round_bf16 = False
    target = mask[1:]
    ref = F.cross_entropy(
        engine.logits(tokens)[:-1][target], torch.tensor(tokens[1:])[target], reduction="none"
    )
    torch.testing.assert_close(losses, ref, atol=FP32_TOL, rtol=1e-5)  # fp32 logsumexp over 201088 ids
    assert loss.item() == pytest.approx(ref.mean().item(), rel=1e-5)


# -- training ---------------------------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = TrainModel(TINY, train.STANDIN_VOCAB, max_positions=256, seed=0)
    opt = train.make_optimizer(model, lr=1e-2, weight_decay=0.0)
    packer = train.Packer(train.standin_samples(0, "train"), 4, 256, set(train.STANDIN_VOCAB), [])
    losses = []
    for _ in range(10):
        opt.zero_grad()
        step_losses, _ = train.forward_backward(model, next(packer), micro_rows=2)
        opt.step()
        losses.append(step_losses.mean().item())
    assert losses[0] == pytest.approx(12.2, abs=0.3)  # ~log(201088): every logit near 0
    assert losses[-1] < losses[0] - 2, losses


SMOKE = ["--steps", "4", "--data", "standin", "--batch-tokens", "512", "--max-len", "256", "--log-every", "1"]


def test_cli_trains_exports_and_engine_loads_it(tmp_path: Path):
    out = tmp_path / "run"
    assert train.main([*SMOKE, "--out", str(out), "--eval-samples", "8"], config=TINY) == 0
    facts = json.loads((out / "training.json").read_text())
    assert facts["steps"] == 4 and facts["parity_max_abs_logit"] < FP32_TOL
    assert facts["eval_loss"] is not None and set(facts["eval_categories"]) == {"copy", "reverse"}
    engine = Engine.load(out, threads=torch.get_num_threads())
    assert engine.config == TINY
    assert torch.isfinite(engine.logits(train.STANDIN_VOCAB[:20])).all()
    engine.close()
    assert (out / "training" / "state.pt").is_file()
    assert len((out / "training" / "log.jsonl").read_text().splitlines()) == 4


def test_time_budget_plans_the_steps_and_ends_on_time(tmp_path: Path):
    out = tmp_path / "run"
    started = time.monotonic()
    train.main([*SMOKE[2:], "--minutes", "0.05", "--out", str(out), "--eval-samples", "0"], config=TINY)
    facts = json.loads((out / "training.json").read_text())
    assert facts["steps"] >= 1 and facts["minutes"] < 0.05 * 1.2
    assert time.monotonic() - started < 30  # the budget, then the export and its check


def test_resume_after_a_crash_gives_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    args = [*SMOKE, "--eval-samples", "0", "--save-minutes", "0"]  # state saved after every step
    train.main([*args, "--out", str(tmp_path / "straight")], config=TINY)
    real, calls = train.forward_backward, []

    def crash_in_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "forward_backward", crash_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train.main([*args, "--out", str(tmp_path / "crashed")], config=TINY)
    monkeypatch.setattr(train, "forward_backward", real)
    train.main([*args, "--out", str(tmp_path / "crashed"), "--resume"], config=TINY)
    straight = (tmp_path / "straight" / "original" / "model.safetensors").read_bytes()
    resumed = (tmp_path / "crashed" / "original" / "model.safetensors").read_bytes()
    assert straight == resumed
    log = (tmp_path / "crashed" / "training" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]  # steps 1-2, crash, resumed at 2


def test_number_rows_start_with_their_digits_and_copying_is_linear():
    """Number tokens share one code in both matrices: the embedding of 13 decodes (through the
    unembedding's code dims alone) to 13, and not to its neighbours; other rows are zero there."""
    numbers = {1000 + v: v for v in range(0, 300)}  # stand-in ids for the 300 numbers
    model = TrainModel(TINY, VOCAB, seed=0, numbers=numbers)
    rows = model.local(torch.tensor(sorted(numbers)))
    code_in = model.embedding.detach()[rows, :NUMBER_DIMS]
    code_out = model.unembedding.detach()[rows, :NUMBER_DIMS]
    assert torch.allclose(code_in, 2.0 * number_code(torch.arange(300.0)))
    scores = code_in[:, :6] @ code_out[:, :6].T  # the phase dims: cosine similarity of the digits
    assert (scores.argmax(dim=1) == torch.arange(300)).all()
    others = model.local(torch.tensor([v for v in VOCAB if v not in numbers]))
    assert (model.embedding.detach()[others, :NUMBER_DIMS] == 0).all()
    plain = TrainModel(TINY, VOCAB, seed=0)
    assert not torch.equal(plain.embedding.detach()[rows, :NUMBER_DIMS], code_in)
    assert torch.equal(plain.embedding.detach()[:, NUMBER_DIMS:], model.embedding.detach()[:, NUMBER_DIMS:])
