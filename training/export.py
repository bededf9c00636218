"""Export a `TrainModel` as an official gpt-oss `original/` checkpoint, and check ossai runs it identically.

    out_dir/original/config.json      the 16 ModelConfig keys
    out_dir/original/dtypes.json      tensor -> BF16 / FP4 / UE8
    out_dir/original/model.safetensors

Names, shapes and dtypes come from `ossai.model.weights.expected_tensors`, so the checkpoint is whatever
ossai (and the reference) expects, with no special case: bf16 everywhere except the MXFP4 expert weights,
embedding/unembedding rows of unused ids zero.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ossai.model.weights import expected_tensors
from ossai.testing.checkpoint import write_safetensors
from training.model import TrainModel, quantize

log = logging.getLogger(__name__)

# parameter-name suffix -> original-layout suffix (all but the expert weights, which become two tensors)
_RENAMES = {
    "norm_scale": "norm.scale",
    "qkv_weight": "qkv.weight",
    "qkv_bias": "qkv.bias",
    "out_weight": "out.weight",
    "out_bias": "out.bias",
    "gate_weight": "gate.weight",
    "gate_bias": "gate.bias",
    "sinks": "sinks",
    "mlp1_bias": "mlp1_bias",
    "mlp2_bias": "mlp2_bias",
    "embedding": "embedding.weight",
    "unembedding": "unembedding.weight",
}


@torch.no_grad()
def checkpoint_tensors(model: TrainModel) -> dict[str, torch.Tensor]:
    """Every tensor of the original layout, by stored name."""
    c = model.config
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        prefix, _, last = name.rpartition(".")
        if last in ("mlp1_weight", "mlp2_weight"):
            blocks, scales = quantize(p)
            out[f"{prefix}.{last}.blocks"], out[f"{prefix}.{last}.scales"] = blocks, scales
        elif last in ("embedding", "unembedding"):
            full = torch.zeros(c.vocab_size, c.hidden_size, dtype=torch.bfloat16)
            full[model.vocab_ids.cpu()] = p.detach().cpu().bfloat16()
            out[_RENAMES[last]] = full
        else:
            out[f"{prefix}.{_RENAMES[last]}".lstrip(".")] = p.detach().cpu().bfloat16().contiguous()
    return out


def export(model: TrainModel, vocab: Sequence[int], out_dir: str | Path) -> Path:
    """Write `out_dir/original/`; returns that directory."""
    if sorted(set(vocab)) != model.vocab:
        raise ValueError("vocab does not match the model's restricted vocabulary")
    specs = expected_tensors(model.config, "original")
    tensors = checkpoint_tensors(model)
    if set(tensors) != set(specs):
        missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
        raise AssertionError(f"export: missing {missing}, unexpected {extra}")
    root = Path(out_dir) / "original"
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(model.config.to_original(), indent=2) + "\n")
    dtypes = {n: {"U8": "FP4" if n.endswith(".blocks") else "UE8"}.get(d, d) for n, (_, d) in specs.items()}
    (root / "dtypes.json").write_text(json.dumps(dtypes, indent=2) + "\n")
    write_safetensors(root / "model.safetensors", specs, tensors.__getitem__)  # checks shapes and dtypes
    return root


@torch.no_grad()
def exported_logits(model: TrainModel, tokens: Sequence[int], full: bool = True) -> torch.Tensor:
    """The training model's logits for one sequence, computed as exported: experts MXFP4, every other
    weight bf16, fp32 activations. [T, vocab_size], or [T, V] over the used rows if not `full`."""
    flags = model.fake_quant, model.round_bf16
    was_training = model.training
    model.fake_quant = model.round_bf16 = True
    model.eval()
    try:
        hidden = model(torch.tensor([list(tokens)], device=model.vocab_ids.device))[0]
        return (model.full_logits(hidden) if full else model.logits(hidden)).cpu()
    finally:
        model.fake_quant, model.round_bf16 = flags
        model.train(was_training)


def verify(model: TrainModel, out_dir: str | Path, tokens: Sequence[int]) -> dict[str, float]:
    """Load `out_dir` with `Engine.load` (the normal path) and compare its logits with the training model's.

    -> {"max_abs": max |Δlogit| over the used ids, "max_rel": that / max |logit|, "argmax_agree": fraction
    of positions whose top used id agrees}. Raises if an unused id's logit is not exactly 0."""
    from ossai.engine import Engine  # lazy: the engine pulls in the kernels and the server-side stack

    engine = Engine.load(out_dir, threads=torch.get_num_threads())
    try:
        theirs = engine.logits(list(tokens))  # [T, vocab_size]: ~0.8 MB per token, compared in place
    finally:
        engine.close()
    ours = exported_logits(model, tokens, full=False)
    ids = model.vocab_ids.cpu()
    used = theirs[:, ids]
    with torch.inference_mode():  # theirs is an inference tensor: zero the used columns in place
        rest = theirs.index_fill_(1, ids, 0).abs().max().item()
    if rest != 0:
        raise AssertionError(f"the exported model gives unused ids nonzero logits (up to {rest})")
    if not torch.isfinite(used).all():
        raise AssertionError("the exported model produced non-finite logits")
    diff = (ours - used).abs().max().item()
    agree = (ours.argmax(-1) == used.argmax(-1)).float().mean().item()
    return {"max_abs": diff, "max_rel": diff / max(used.abs().max().item(), 1e-30), "argmax_agree": agree}
