"""bench/gguf_export.py: the GGUF that llama.cpp runs in bench/compare_llamacpp.py holds our weights.

The `gguf` and `llama-cpp-python` packages are the `bench` extra, not the test extra (CI must not compile
llama.cpp): the checks that need them are skipped, with the reason, when they are missing. With gguf
installed the file's metadata, tensor names, types and shapes are checked and every tensor is decoded by
gguf's own dequantizer and compared with the checkpoint; with llama-cpp-python also llama.cpp's logits
against `Engine.logits`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bench.gguf_export import bytes_to_unicode, mxfp4_to_ggml, recover_merges
from ossai.model.mxfp4 import dequantize

HAVE_GGUF = importlib.util.find_spec("gguf") is not None
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="the gguf package (pip install -e .[bench]) is missing")
needs_llama = pytest.mark.skipif(
    not (HAVE_GGUF and HAVE_LLAMA),
    reason="llama-cpp-python and gguf (pip install -e .[bench], compiles llama.cpp) are missing",
)


def test_byte_map_is_gpt2s():
    m = bytes_to_unicode()
    assert len(m) == 256 and len(set(m.values())) == 256
    assert m[ord("a")] == "a" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ"


def test_merges_rebuild_each_token_from_lower_ranks():
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"ab", b"abc", b"bc", b"abcd", b"cd"):
        ranks[token] = len(ranks)
    merges = recover_merges(ranks)
    # "abc" = "ab"+"c" (bc ranks after abc); "abcd" = "abc"+"d"? no: "ab","cd" would need cd < abcd, and
    # BPE on a,b,c,d with ranks ab < abc < bc < abcd < cd merges ab, then abc, then abc+d
    assert merges == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"d"), (b"c", b"d")]


def test_mxfp4_repack_is_lossless_and_in_ggml_order():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(118, 130, (3, 5, 4), dtype=torch.uint8, generator=g)
    packed = mxfp4_to_ggml(blocks, scales)
    assert packed.shape == (3, 5, 4 * 17)
    ref = dequantize(blocks, scales).numpy()  # [3, 5, 128]
    # GGML's block_mxfp4: scale byte, then qs[j] = value j (low nibble) | value j+16 (high nibble)
    b = packed.reshape(3, 5, 4, 17)
    lut = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
    values = np.concatenate((lut[b[..., 1:] & 0x0F], lut[b[..., 1:] >> 4]), axis=-1)
    values = values * np.exp2(b[..., :1].astype(np.float32) - 127)
    np.testing.assert_array_equal(values.reshape(3, 5, 128), ref)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoints, tmp_path_factory):
    if not HAVE_GGUF:
        pytest.skip("the gguf package (pip install -e .[bench]) is missing")
    from bench.gguf_export import export

    root = tiny_checkpoints(0, "original")
    return root, export(root, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@needs_gguf
def test_exported_metadata_and_tensors(tiny_gguf):
    import gguf
    from gguf.quants import dequantize as gguf_dequantize

    from ossai.model.weights import Checkpoint

    root, path = tiny_gguf
    ck = Checkpoint.open(root)
    c = ck.config
    reader = gguf.GGUFReader(path)

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "gpt-oss"
    expected = {
        "gpt-oss.block_count": c.num_hidden_layers,
        "gpt-oss.context_length": c.max_context,
        "gpt-oss.embedding_length": c.hidden_size,
        "gpt-oss.expert_feed_forward_length": c.intermediate_size,
        "gpt-oss.attention.head_count": c.num_attention_heads,
        "gpt-oss.attention.head_count_kv": c.num_key_value_heads,
        "gpt-oss.attention.key_length": c.head_dim,
        "gpt-oss.attention.value_length": c.head_dim,
        "gpt-oss.expert_count": c.num_experts,
        "gpt-oss.expert_used_count": c.experts_per_token,
        "gpt-oss.attention.sliding_window": c.sliding_window,
        "gpt-oss.rope.freq_base": c.rope_theta,
        "gpt-oss.rope.scaling.type": "yarn",
        "gpt-oss.rope.scaling.factor": c.rope_scaling_factor,
        "gpt-oss.rope.scaling.original_context_length": c.initial_context_length,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-4o",
    }
    assert {k: field(k) for k in expected} == pytest.approx(expected)
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == c.vocab_size
    assert tokens[200006] == "<|start|>" and types[200006] == gguf.TokenType.CONTROL
    assert tokens[0] == "!" and types[0] == gguf.TokenType.NORMAL
    assert len(field("tokenizer.ggml.merges")) == 199998 - 256

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 19 * c.num_hidden_layers
    h, e, i = c.hidden_size, c.num_experts, c.intermediate_size
    q = gguf.GGMLQuantizationType
    shapes = {  # ggml order (fastest dim first), as llama.cpp's loader asks for them
        "token_embd.weight": ([h, c.vocab_size], q.BF16),
        "output.weight": ([h, c.vocab_size], q.BF16),
        "output_norm.weight": ([h], q.F32),
        "blk.0.attn_q.weight": ([h, c.q_dim], q.BF16),
        "blk.0.attn_k.bias": ([c.kv_dim], q.F32),
        "blk.0.attn_output.weight": ([c.q_dim, h], q.BF16),
        "blk.0.attn_sinks.weight": ([c.num_attention_heads], q.F32),
        "blk.0.post_attention_norm.weight": ([h], q.F32),
        "blk.0.ffn_gate_inp.weight": ([h, e], q.F32),
        "blk.0.ffn_gate_exps.weight": ([h, i, e], q.MXFP4),
        "blk.0.ffn_up_exps.bias": ([i, e], q.F32),
        "blk.0.ffn_down_exps.weight": ([i, h, e], q.MXFP4),
        "blk.0.ffn_down_exps.bias": ([h, e], q.F32),
    }
    for name, (shape, kind) in shapes.items():
        assert (list(tensors[name].shape), tensors[name].tensor_type) == (shape, kind), name

    def decoded(name):
        t = tensors[name]
        return np.asarray(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32)

    for n in range(c.num_hidden_layers):
        b, blk = f"block.{n}", f"blk.{n}"
        w1 = dequantize(ck.get(f"{b}.mlp.mlp1_weight.blocks"), ck.get(f"{b}.mlp.mlp1_weight.scales")).numpy()
        w2 = dequantize(ck.get(f"{b}.mlp.mlp2_weight.blocks"), ck.get(f"{b}.mlp.mlp2_weight.scales")).numpy()
        bias1 = ck.get(f"{b}.mlp.mlp1_bias").float().numpy()
        np.testing.assert_array_equal(decoded(f"{blk}.ffn_gate_exps.weight"), w1[:, 0::2])
        np.testing.assert_array_equal(decoded(f"{blk}.ffn_up_exps.weight"), w1[:, 1::2])
        np.testing.assert_array_equal(decoded(f"{blk}.ffn_down_exps.weight"), w2)
        np.testing.assert_array_equal(decoded(f"{blk}.ffn_gate_exps.bias"), bias1[:, 0::2])
        np.testing.assert_array_equal(decoded(f"{blk}.ffn_up_exps.bias"), bias1[:, 1::2])
        for p in "qkv":
            ref = ck.get(f"{b}.attn.{p}.weight").float().numpy()
            np.testing.assert_array_equal(decoded(f"{blk}.attn_{p}.weight"), ref)
        np.testing.assert_array_equal(decoded(f"{blk}.attn_sinks.weight"), ck.get(f"{b}.attn.sinks").float())
    np.testing.assert_array_equal(decoded("output.weight"), ck.get("unembedding.weight").float().numpy())


@needs_llama
@pytest.mark.slow
def test_llama_cpp_logits_agree_with_ossai(tiny_gguf):
    from llama_cpp import Llama

    from ossai.engine import Engine

    root, path = tiny_gguf
    ids = torch.randint(0, 199_998, (48,), generator=torch.Generator().manual_seed(3)).tolist()
    ours = Engine.load(root, threads=2).logits(ids).numpy()
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    assert theirs.shape == ours.shape
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    diff = np.abs(theirs - ours)
    # llama.cpp rounds activations (bf16 / q8 products): close, not equal. Random routers sit near ties, so
    # a few positions pick another expert and differ by up to ~1; a layout error gives garbage everywhere.
    assert top1 >= 0.9, f"top-1 agreement {top1:.2f}"
    assert float(diff.mean()) < 0.05 * float(ours.std()), f"mean |delta| {diff.mean():.3f}"
    assert float((diff.max(-1) < 0.25).mean()) >= 0.9, f"per-position max |delta| {diff.max(-1)}"
