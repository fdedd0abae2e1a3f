import json

import pytest
import torch

from agent_forge_core.errors import ModelLoadError
from agent_forge_core.model_io import load_model, save_model


def _ids(tok):
    return tok("Q: Records: cat=41; sun=7. What is the value of sun?\nA:", return_tensors="pt").input_ids


def test_save_load_identical_logits(tiny_model_dir, tmp_path):
    model, tok = load_model(str(tiny_model_dir))
    out = save_model(model, tok, tmp_path / "copy")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    again, tok2 = load_model(str(out))
    with torch.no_grad():
        assert torch.equal(model(_ids(tok)).logits, again(_ids(tok2)).logits)


def test_gguf_file_loads_to_identical_logits(tiny_model_dir, tmp_path):
    from tiny_gguf import write_gguf

    model, tok = load_model(str(tiny_model_dir))
    path = write_gguf(model, tok, tmp_path / "tiny.gguf")
    g_model, g_tok = load_model(str(path))
    assert not getattr(g_model, "is_quantized", False)
    assert g_tok(_ids_text := "Q: 12 + 7 = 19.").input_ids == tok(_ids_text).input_ids
    with torch.no_grad():
        assert torch.allclose(model(_ids(tok)).logits, g_model(_ids(g_tok)).logits, atol=1e-5)
    # a GGUF-loaded model saves as a normal safetensors checkpoint
    save_model(g_model, g_tok, tmp_path / "from-gguf")
    assert "quantization_config" not in json.loads((tmp_path / "from-gguf" / "config.json").read_text())


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"does not exist; give a local folder"):
        load_model(str(tmp_path / "nowhere"))


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="never pickled"):
        load_model(str(tmp_path / "m"))


def test_unsupported_architecture(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "weird"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "not-a-real-arch"
    cfg["architectures"] = ["NotARealArch"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture|not-a-real-arch"):
        load_model(str(d))


def test_vocab_mismatch(tiny_model_dir, tmp_path):
    from tiny import build_model

    _, tok = load_model(str(tiny_model_dir))
    small = build_model(vocab_size=100)
    save_model(small, tok, tmp_path / "mismatch")
    with pytest.raises(ModelLoadError, match=r"tokenizer has \d+ tokens but the model's embedding has 100 rows"):
        load_model(str(tmp_path / "mismatch"))


def test_side_files_carry_config_and_tokenizer_never_weights_store_files_or_code(tmp_path):
    from agent_forge_core.formats.files import copy_side_files

    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "bitnet.json", "model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "manifest.json", ".verified", "modeling_custom.py"):
        (src / name).write_text("x")
    assert copy_side_files(src, tmp_path / "dst") == ["bitnet.json", "config.json", "tokenizer.json"]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["bitnet.json", "config.json", "tokenizer.json"]
