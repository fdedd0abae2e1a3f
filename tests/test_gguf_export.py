"""GGUF export: what llama.cpp runs, read back through transformers' GGUF loader (which undoes the rope
permutation and dequantizes with the `gguf` package)."""
from __future__ import annotations

import pytest
import torch

from agent_forge_core.context import make_context
from agent_forge_core.errors import ConfigError
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on
from flows.cli import main

TEXT = "Q: Records: cat=41; sun=7. What is the value of sun?\nA: 7</s>"


def _read_back(folder, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def test_gguf_export_is_exact_in_f32_within_a_step_in_q8_and_keeps_the_tokenizer(tiny_settings, tmp_path, capsys):
    s = tiny_settings()
    key = run_stage_on("import", [], make_context(s)).outputs[0]
    src, tok = load_model(str(make_context(s).store.get(key)))
    ids = tok(TEXT, return_tensors="pt").input_ids
    store = ["--set", f"store.url={s.store.url}"]
    got = {}
    for t in ("F32", "Q8_0", "TQ2_0"):
        assert main(["export", key, str(tmp_path / t), "--format", "gguf", "--gguf-type", t, *store]) == 0
        got[t] = (*_read_back(tmp_path / t, f"{key}.{t}.gguf"), capsys.readouterr().out)
    with torch.no_grad():
        ref = src(ids).logits
        assert torch.equal(got["F32"][0](ids).logits, ref)  # names, layout and rope permutation exact
        q8 = got["Q8_0"][0]
        for name, w in src.state_dict().items():
            back = q8.state_dict()[name]
            if w.ndim == 1:
                assert torch.equal(back, w), name  # norms stay F32
                continue
            blocks, err = w.reshape(-1, 32), (back - w).reshape(-1, 32).abs()
            # Q8_0: per 32 weights a float16 scale d = max|w|/127 and q = round(w/d): half a step, plus up to
            # 127 times d's float16 rounding (2^-11 relative)
            amax = blocks.abs().amax(1, keepdim=True)
            assert (err <= amax * (0.5 / 127 + 2 ** -11) + 1e-8).all(), name
        assert (q8(ids).logits - ref).abs().max() < 0.05 * ref.abs().max()
    # TQ2_0's 256-weight blocks do not divide 64-wide rows: every matrix falls back to Q8_0, and it says so
    assert "fell back" in got["TQ2_0"][2]
    assert all(torch.equal(a, b) for a, b in zip(got["TQ2_0"][0].state_dict().values(), q8.state_dict().values()))
    back_tok = got["F32"][1]
    assert back_tok(TEXT).input_ids == tok(TEXT).input_ids  # special tokens are single ids both ways
    assert (back_tok.bos_token, back_tok.eos_token, back_tok.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert back_tok.decode(ids[0]) == tok.decode(ids[0])
    import gguf

    pre = gguf.GGUFReader(str(tmp_path / "F32" / f"{key}.F32.gguf")).fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "gpt-2"  # a name llama.cpp knows (it refuses "gpt2")


def test_ternary_weights_are_exact_in_tq2_0_and_tq1_0(tmp_path):
    """A ternary model (w = α·{−1, 0, 1}, α a float16 value) with 256-wide rows: TQ1_0/TQ2_0 hold one float16
    scale per 256 weights, so they store it exactly, at 1.69 / 2.06 bits per weight."""
    from tiny import build_model, build_tokenizer

    from agent_forge_core.gguf_export import write_gguf

    tok = build_tokenizer()
    model = build_model(len(tok), hidden=256)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.copy_(0.0625 * torch.randint(-1, 2, p.shape, generator=g).float())
    for t in ("TQ2_0", "TQ1_0"):
        info = write_gguf(model, tok, tmp_path / f"m.{t}.gguf", t)
        # every matrix but the embedding (kept Q8_0 below 8 bits, as llama.cpp does): 256-wide rows divide
        assert info["tensor_types"] == {t: 14, "Q8_0": 1, "F32": 5} and not info["fallbacks"]
        back, _ = _read_back(tmp_path, f"m.{t}.gguf")
        for name, w in model.state_dict().items():
            if "embed" not in name and "lm_head" not in name:  # the tied head is the embedding
                assert torch.equal(back.state_dict()[name], w), (t, name)


def test_unsupported_exports_are_refused_with_the_way_out(tiny_model_dir, tmp_path):
    from agent_forge_core.gguf_export import write_gguf

    model, tok = load_model(str(tiny_model_dir))
    with pytest.raises(ConfigError, match="llama-quantize"):
        write_gguf(model, tok, tmp_path / "x.gguf", "Q4_K")
    model.config.model_type = "mistral"
    with pytest.raises(ConfigError, match="--format hf"):
        write_gguf(model, tok, tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()
