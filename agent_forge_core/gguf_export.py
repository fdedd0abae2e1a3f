"""A float Llama-architecture model written as a GGUF file, llama.cpp's format, with the `gguf` package (the
writer llama.cpp's own converter uses), so llama.cpp and the tools built on it run the forged model.

What is written follows llama.cpp's `convert_hf_to_gguf.py` (its `LlamaModel`):
- `llama.*` hyper-parameters, with rope.dimension_count = head_dim;
- the tokenizer: model "gpt2" (byte-level BPE), every id's token and type (normal 1, control 3 for special
  added tokens, user-defined 4 for other added tokens, unused 5 for ids past the tokenizer that the
  embedding still has), the merges, the special ids, add_bos, the chat template. `tokenizer.ggml.pre`
  names llama.cpp's pre-tokenizer regex; its converter finds it by hashing a test string's tokenization,
  we read it from the HF pre-tokenizer's structure (the two structures we know; otherwise the key is left
  out, which llama.cpp accepts with a warning that it falls back to the default);
- Q and K projections with their rows permuted from HF's rotate-half rope layout to llama.cpp's
  interleaved one: W.reshape(h, 2, d/2, n).swapaxes(1, 2).reshape(W.shape), h the query heads for Q and the
  key/value heads for K (transformers' GGUF loader undoes exactly this);
- matrices at the chosen type, vectors (norms) F32; below 8 bits the token embedding (and an untied output
  matrix) stays Q8_0, as llama.cpp's own Q4/Q5 files keep it (one bad row there is a token lost, not a
  weight). A matrix whose rows do not divide into the type's
  blocks (32 weights; 256 for the ternary TQ1_0/TQ2_0, which 576-wide SmolLM2 rows defeat) falls back to
  Q8_0, then F16, and the fallback is reported.
The `gguf` package quantizes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0 and TQ2_0; llama.cpp's
k-quants it only reads, so they are refused here (llama.cpp's `llama-quantize` makes them from an F16 file).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

WEIGHT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "TQ2_0", "TQ1_0")
FALLBACK = ("Q8_0", "F16")
EMBEDDING_FLOOR = "Q8_0"
_BELOW_8_BITS = ("Q5_1", "Q5_0", "Q4_1", "Q4_0", "TQ2_0", "TQ1_0")

# HF per-layer tensor suffix -> GGUF name; llama.cpp's tensor names for the Llama architecture.
_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER:
        return f"blk.{parts[2]}.{_LAYER['.'.join(parts[3:])]}"
    raise ConfigError(f"GGUF export: no llama.cpp name for tensor {hf_name!r} (only the plain Llama layout "
                      "is exported; export it with --format hf instead)")


def rope_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half rows -> llama.cpp's interleaved rows, per head (see the module docstring)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for the pre-tokenizer, from the HF pre-tokenizer's structure; None: not known."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex", True)) for s in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"  # llama.cpp's name (src/llama-vocab.cpp); "gpt2" is refused as unknown
    if kinds == [("Digits", True, True), ("ByteLevel", None, True)]:
        return "smollm"  # llama.cpp's regex for SmolLM: one digit per piece, then GPT-2's
    return None


def _check(config) -> None:
    if config.model_type != "llama":
        raise ConfigError(f"GGUF export writes the llama architecture; this model is {config.model_type!r} "
                          "(export it with --format hf)")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not written (llama.cpp needs "
                          "its rope_freqs tensor); export it with --format hf")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigError("GGUF export: llama.cpp's Llama graph has no projection biases; export with --format hf")


def _tokenizer(writer, tokenizer, vocab_size: int) -> dict:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ConfigError(f"GGUF export writes byte-level BPE tokenizers; this one is {spec['model']['type']}")
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(by_id)} ids but the embedding only {vocab_size} rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # an embedding row no token uses
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if by_id[i] not in added else
                         gguf.TokenType.CONTROL if added[by_id[i]] else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    pre = pre_tokenizer_name(spec)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if tid is not None:
            add(tid)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)  # byte-level BPE marks spaces itself (Ġ)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    return {"pre_tokenizer": pre, "tokens": len(tokens), "merges": len(merges)}


def _encode(w: np.ndarray, wanted: str) -> tuple[np.ndarray, str]:
    """(data, type) for one matrix: `wanted`, or the first fallback whose blocks divide its rows."""
    import gguf

    for name in (wanted, *(f for f in FALLBACK if f != wanted)):
        qtype = gguf.GGMLQuantizationType[name]
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if w.shape[-1] % block == 0:
            return gguf.quants.quantize(w, qtype), name
    raise AssertionError("F16 has blocks of one")


def check_weight_type(weight_type: str) -> None:
    if weight_type not in WEIGHT_TYPES:
        raise ConfigError(f"unknown GGUF weight type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)} "
                          "(k-quants: make an F16 file and run llama.cpp's llama-quantize)")


def write_gguf(model, tokenizer, path: str | Path, weight_type: str = "Q8_0", name: str = "") -> dict:
    """Writes `model` (a float LlamaForCausalLM) and `tokenizer` to `path`; returns what was written:
    tensor types and counts, fallbacks, tokenizer facts, file bytes."""
    import gguf

    check_weight_type(weight_type)
    cfg = model.config
    _check(cfg)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")  # a failed write leaves no file that looks whole
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    writer = gguf.GGUFWriter(str(partial), "llama")
    if name:
        writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{weight_type}" if weight_type not in ("F32",) else "ALL_F32"])
    tok_info = _tokenizer(writer, tokenizer, cfg.vocab_size)
    counts: dict[str, int] = {}
    fallbacks: dict[str, str] = {}
    state = model.state_dict()
    tied = cfg.tie_word_embeddings
    for hf_name, t in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        t = t.detach().to(torch.float32)
        if hf_name.endswith("q_proj.weight"):
            t = rope_permute(t, heads)
        elif hf_name.endswith("k_proj.weight"):
            t = rope_permute(t, kv)
        w = t.contiguous().numpy()
        out_name = gguf_name(hf_name)
        if w.ndim == 1:
            data, qname = w, "F32"
        else:
            wanted = EMBEDDING_FLOOR if out_name in ("token_embd.weight", "output.weight") and \
                weight_type in _BELOW_8_BITS else weight_type
            data, qname = _encode(w, wanted)
            if qname != wanted:
                fallbacks[out_name] = qname
        writer.add_tensor(out_name, data, raw_dtype=gguf.GGMLQuantizationType[qname])
        counts[qname] = counts.get(qname, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return {"path": str(path), "weight_type": weight_type, "tensor_types": counts, "fallbacks": fallbacks,
            "bytes": path.stat().st_size, **tok_info}
