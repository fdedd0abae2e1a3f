import json

import pytest
import torch
from safetensors import safe_open

from agent_forge_core.bitnet.bitlinear import BitLinear, PackedBitLinear, set_kernel
from agent_forge_core.formats.bitnet import load_bitnet, save_bitnet
from agent_forge_core.bitnet.convert import convert, lambda_at, set_lambda
from agent_forge_core.context import make_context
from agent_forge_core.errors import ConfigError
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.plan import plan
from agent_forge_core.stages.runner import run_stage_on


@pytest.mark.parametrize("schedule", ["linear", "exponential", "sigmoid"])
def test_lambda_schedules_ramp_from_zero_to_one(schedule):
    vals = [lambda_at(s, 10, schedule) for s in range(0, 13)]
    assert vals[0] == pytest.approx(0.0, abs=1e-9) and vals[10] == pytest.approx(1.0) and vals[12] == 1.0
    assert all(a <= b + 1e-12 for a, b in zip(vals, vals[1:]))
    assert lambda_at(0, 10, "none") == 1.0


@pytest.mark.parametrize("fmt", ["base3", "2bit"])
def test_checkpoint_round_trip_identical_logits(tiny_model_dir, tmp_path, fmt):
    model, tok = load_model(str(tiny_model_dir))
    ids = tok("Q: Records: cat=41; sun=7. What is the value of sun?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    convert(model)
    set_lambda(model, 0.0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)  # lam = 0 is the original model
    set_lambda(model, 1.0)
    with torch.no_grad():
        fake = model(ids).logits
    account = save_bitnet(model, tok, tmp_path / "bn", fmt)
    with safe_open(str(tmp_path / "bn" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.endswith("q_proj.weight") for k in keys) and any(k.endswith("q_proj.packed") for k in keys)
    packed, _ = load_model(str(tmp_path / "bn"))
    assert any(isinstance(m, PackedBitLinear) for m in packed.modules())
    with torch.no_grad():
        set_kernel(packed, "dequant")
        assert torch.equal(packed(ids).logits, fake)  # packed inference == fake-quant path
        set_kernel(packed, "int8")  # the default: exact integer products, float32 rounding apart
        assert torch.allclose(packed(ids).logits, fake, rtol=1e-4, atol=1e-4 * float(fake.abs().max()))
    trainable, _ = load_bitnet(tmp_path / "bn", trainable=True)
    assert any(isinstance(m, BitLinear) for m in trainable.modules())
    with torch.no_grad():
        assert torch.allclose(trainable(ids).logits, fake, atol=1e-4)  # training can resume from it
    expected = {"base3": 1.6, "2bit": 2.0}[fmt]
    assert account["bits_per_weight_ternary_layers"] == pytest.approx(expected, rel=0.03)


def test_bitnet_stage_writes_packed_checkpoint_with_bits(tiny_settings):
    s = tiny_settings("cognate.enabled=false", "bitnet.enabled=true", "bitnet.steps=6", "bitnet.warmup=3",
                      "bitnet.batch_size=4", "bitnet.max_len=96", "bitnet.lr=0.003")
    assert plan(s) == ["import", "bitnet"]
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    res = run_stage_on("bitnet", base.outputs, ctx)
    (key,) = res.outputs
    m = ctx.store.manifest(key)
    bits = m.info["bits"]
    assert bits["bits_per_weight_ternary_layers"] < 1.7 and bits["bits_per_weight_model"] < 32
    assert set(m.info["ptq_metrics"]) == set(m.metrics)
    folder = ctx.store.get(key)
    meta = json.loads((folder / "bitnet.json").read_text())
    assert meta["format"] == "base3" and len(meta["layers"]) == 14
    # the file holds what the account says (plus the safetensors header)
    size = (folder / "model.safetensors").stat().st_size
    accounted = (bits["ternary_params"] * bits["bits_per_weight_ternary_layers"]
                 + bits["other_params"] * 32) / 8
    assert accounted <= size <= accounted * 1.02 + 16_384


def test_bitnet_after_several_cognates_is_refused():
    from agent_forge_core.config import load_settings

    with pytest.raises(ConfigError, match="takes one model but 'cognate' produces several"):
        plan(load_settings(overrides=["bitnet.enabled=true", "evomerge.enabled=false"]))
    with pytest.raises(ConfigError, match=r"warmup \(80\) must not exceed steps \(60\)"):
        load_settings(overrides=["bitnet.warmup=80"])


def test_export_of_a_bitnet_checkpoint_loads_in_plain_transformers(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from agent_forge_core.formats.bitnet import export_hf as export_dequantized
    from agent_forge_core.bitnet.ternary import weight_codes

    model, tok = load_model(str(tiny_model_dir))
    convert(model)
    save_bitnet(model, tok, tmp_path / "bn", "2bit")
    export_dequantized(tmp_path / "bn", tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    w = plain.model.layers[0].self_attn.q_proj.weight
    codes, gamma = weight_codes(model.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(w, codes.float() * gamma)  # ternary structure preserved
    assert len(torch.unique(w)) <= 3
