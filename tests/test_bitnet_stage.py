import json

import pytest
import torch
from safetensors import safe_open

from agent_forge_core.bitnet.bitlinear import BitLinear, PackedBitLinear, set_kernel
from agent_forge_core.formats.bitnet import load_bitnet, save_bitnet
from agent_forge_core.bitnet.convert import convert, lambda_at, set_lambda
from agent_forge_core.bitnet.packing import packed_size
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


@pytest.mark.parametrize("fmt,per_channel", [("base3", False), ("2bit", False), ("base3", True)])
def test_checkpoint_round_trip_identical_logits(tiny_model_dir, tmp_path, fmt, per_channel):
    model, tok = load_model(str(tiny_model_dir))
    ids = tok("Q: Records: cat=41; sun=7. What is the value of sun?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    convert(model, per_channel=per_channel)
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
    if not per_channel:  # (the tiny model's 64-wide rows make per-row scales cost 0.5 bits/weight)
        assert account["bits_per_weight_ternary_layers"] == pytest.approx(expected, rel=0.03)
    # the account exactly: whole bytes of codes and 32 bits per scale, one per layer or one per output row
    layers = [m for m in trainable.modules() if isinstance(m, BitLinear)]
    assert all(m.per_channel == per_channel for m in layers)
    bits = sum(packed_size(m.weight.numel(), fmt) * 8
               + 32 * (m.out_features if per_channel else 1) for m in layers)
    assert account["bits_per_weight_ternary_layers"] == pytest.approx(bits / sum(m.weight.numel() for m in layers))
    meta = json.loads((tmp_path / "bn" / "bitnet.json").read_text())
    assert meta["scales"] == ("channel" if per_channel else "tensor")
    with safe_open(str(tmp_path / "bn" / "model.safetensors"), "pt") as f:
        g = f.get_tensor("model.layers.0.self_attn.q_proj.gamma")
    assert g.shape == ((layers[0].out_features,) if per_channel else (1,))


def test_float_layers_stay_float_through_the_packed_round_trip_and_count_32_bits(tiny_model_dir, tmp_path):
    from agent_forge_core.bitnet.convert import layer_index

    model, tok = load_model(str(tiny_model_dir))
    ids = tok("Q: What is 2 + 3?\nA:", return_tensors="pt").input_ids
    names = convert(model, per_channel=True, float_layers=[-1])  # the tiny model's 2 layers: layer 1 stays float
    assert names and {layer_index(n) for n in names} == {0}
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if layer_index(n) == 1 and n.endswith("_proj"))
    set_lambda(model, 1.0)
    with torch.no_grad():
        fake = model(ids).logits
    account = save_bitnet(model, tok, tmp_path / "bn", "base3")
    packed, _ = load_model(str(tmp_path / "bn"))
    assert {layer_index(n) for n, m in packed.named_modules() if isinstance(m, PackedBitLinear)} == {0}
    with torch.no_grad():
        set_kernel(packed, "dequant")
        assert torch.equal(packed(ids).logits, fake)
    # exactly: the ternary layers' codes and row scales, every other weight (the float layer too) at 32 bits
    bits = [m for m in model.modules() if isinstance(m, BitLinear)]
    ternary = sum(m.weight.numel() for m in bits)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    expected = sum(packed_size(m.weight.numel(), "base3") * 8 + 32 * m.out_features for m in bits) + 32 * (total - ternary)
    assert account["ternary_params"] == ternary and account["bits_per_weight_model"] * total == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"bitnet.float_layers \[2\]: the model has 2 decoder layers"):
        convert(load_model(str(tiny_model_dir))[0], float_layers=[2])
    with pytest.raises(ValueError, match="outside the float layers"):
        convert(load_model(str(tiny_model_dir))[0], float_layers=[0, -1])


def test_bfloat16_embeddings_cost_16_bits_less_and_the_packed_head_multiplies_in_bfloat16(tiny_model_dir, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM

    from agent_forge_core.formats.bitnet import export_hf, layout

    model, tok = load_model(str(tiny_model_dir))
    ids = tok("Q: Records: cat=41; sun=7. What is the value of sun?\nA:", return_tensors="pt").input_ids
    convert(model)
    set_lambda(model, 1.0)
    a32 = save_bitnet(model, tok, tmp_path / "f32", "2bit")
    a16 = save_bitnet(model, tok, tmp_path / "b16", "2bit", embeddings="bfloat16")
    e = model.get_input_embeddings().weight.detach()
    total = a32["ternary_params"] + a32["other_params"]
    assert a32["bits_per_weight_model"] - a16["bits_per_weight_model"] == pytest.approx(16 * e.numel() / total)
    with safe_open(str(tmp_path / "b16" / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), e.bfloat16())
    assert layout(tmp_path / "b16") == {"fmt": "2bit", "embeddings": "bfloat16"}  # what loop and baking rewrite
    packed, _ = load_model(str(tmp_path / "b16"))
    head = packed.get_output_embeddings().weight
    assert head is packed.get_input_embeddings().weight and head.dtype == torch.bfloat16  # one 16-bit tensor
    # reference: the fake-quant model with its embeddings rounded to bfloat16, in float64; the packed model's only
    # further rounding is the final hidden state's, to bfloat16, before the head's product
    ref_model = copy.deepcopy(model).double()
    ref_model.get_input_embeddings().weight.data = e.bfloat16().double()
    set_kernel(packed, "dequant")
    with torch.no_grad():
        ref, out = ref_model(ids).logits, packed(ids).logits
    assert out.dtype == torch.float32
    err = float((out.double() - ref).abs().max())
    assert 0 < err < 2 ** -6 * float(ref.abs().max())
    trainable, _ = load_bitnet(tmp_path / "b16", trainable=True)  # training widens them back to float32
    assert torch.equal(trainable.get_input_embeddings().weight, e.bfloat16().float())
    export_hf(tmp_path / "b16", tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert torch.equal(plain.get_input_embeddings().weight, e.bfloat16().float())


@pytest.mark.parametrize("embeddings,scales,float_layers", [("float32", "tensor", "[]"), ("bfloat16", "tensor", "[]"),
                                                            ("float32", "channel", "[-1]")])
def test_bitnet_stage_writes_packed_checkpoint_with_bits(tiny_settings, embeddings, scales, float_layers):
    s = tiny_settings("cognate.enabled=false", "bitnet.enabled=true", "bitnet.steps=6", "bitnet.warmup=3",
                      "bitnet.batch_size=4", "bitnet.max_len=96", "bitnet.lr=0.003", f"bitnet.embeddings={embeddings}",
                      f"bitnet.scales={scales}", f"bitnet.float_layers={float_layers}")
    assert plan(s) == ["import", "bitnet"]
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    res = run_stage_on("bitnet", base.outputs, ctx)
    (key,) = res.outputs
    m = ctx.store.manifest(key)
    bits = m.info["bits"]
    assert bits["bits_per_weight_ternary_layers"] < (1.7 if scales == "tensor" else 2.2)
    assert bits["bits_per_weight_model"] < 32
    assert set(m.info["ptq_metrics"]) == set(m.metrics)
    folder = ctx.store.get(key)
    meta = json.loads((folder / "bitnet.json").read_text())
    # 7 projections in each of the 2 layers; with float_layers [-1] only layer 0's are ternary
    assert meta["format"] == "base3" and len(meta["layers"]) == (7 if float_layers == "[-1]" else 14)
    assert meta["embeddings"] == embeddings
    assert float_layers == "[]" or all(".layers.0." in n for n in meta["layers"])
    assert meta["scales"] == scales
    # the file holds what the account says (plus the safetensors header): embeddings at their stored width
    size = (folder / "model.safetensors").stat().st_size
    cfg = json.loads((folder / "config.json").read_text())
    emb = cfg["vocab_size"] * cfg["hidden_size"]
    accounted = (bits["ternary_params"] * bits["bits_per_weight_ternary_layers"] + (bits["other_params"] - emb) * 32
                 + emb * torch.finfo(getattr(torch, meta["embeddings"])).bits) / 8
    assert accounted <= size <= accounted * 1.02 + 16_384


def test_bitnet_after_several_cognates_is_refused():
    from agent_forge_core.config import load_settings

    with pytest.raises(ConfigError, match="takes one model but 'cognate' produces several"):
        plan(load_settings(overrides=["bitnet.enabled=true", "evomerge.enabled=false"]))
    with pytest.raises(ConfigError, match=r"warmup \(80\) must not exceed steps \(60\)"):
        load_settings(overrides=["bitnet.warmup=80"])


def test_qat_mixture_follows_the_data_shares_and_refuses_a_share_outside_the_data():
    from agent_forge_core.config import load_settings
    from agent_forge_core.training.focuses import mixture_counts

    names = ["language", "reasoning", "memory", "instruction"]
    assert mixture_counts(680, names, {}) == dict.fromkeys(names, 170)  # the equal split as before
    c = mixture_counts(680, names, {"language": 3})
    assert c["language"] == 340 and sorted(c[n] for n in names[1:]) == [113, 113, 114]
    assert mixture_counts(3, names, {"language": 100})["reasoning"] == 1  # every focus keeps a sequence
    with pytest.raises(ConfigError, match=r"bitnet.data_share \{'poetry': 2.0\}: each key must be a focus in bitnet.data"):
        load_settings(overrides=["bitnet.data_share={poetry: 2}"])
    with pytest.raises(ConfigError, match="positive weight"):
        load_settings(overrides=["bitnet.data_share={language: 0}"])


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


def test_kl_to_teacher_is_the_hinton_formula():
    from agent_forge_core.training.distill import kl_to_teacher

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    T = 2.0
    pt, ps = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    per = (pt * (pt.log() - ps.log())).sum(-1)
    ref = (per * mask).sum() / mask.sum() * T * T
    assert torch.allclose(kl_to_teacher(s, t, mask, T), ref, atol=1e-6)
    assert kl_to_teacher(t, t, mask, T) == pytest.approx(0.0, abs=1e-6)


def _kl_to_float(ctx, float_key: str, key: str) -> float:
    """Mean KL(float ‖ ternary) per token on held-out natural text."""
    from agent_forge_core.evals.text import natural_text
    from agent_forge_core.training.distill import kl_to_teacher

    teacher, tok = load_model(str(ctx.store.get(float_key)))
    student, _ = load_model(str(ctx.store.get(key)))
    ids = tok(natural_text("test")[:4000], return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        return float(kl_to_teacher(student(ids).logits, teacher(ids).logits, torch.ones_like(ids), 1.0))


def test_distilled_qat_ends_closer_to_its_float_model_than_plain_qat(tiny_settings):
    common = ["cognate.enabled=false", "bitnet.enabled=true", "bitnet.steps=24", "bitnet.warmup=4",
              "bitnet.batch_size=4", "bitnet.max_len=96", "bitnet.lr=0.003", "bitnet.measure_ptq=false"]
    kl = {}
    for w in (0.0, 1.0):
        s = tiny_settings(*common, f"bitnet.distill.kl_weight={w}")
        ctx = make_context(s)
        (base,) = run_stage_on("import", [], ctx).outputs
        (key,) = run_stage_on("bitnet", [base], ctx).outputs
        kl[w] = _kl_to_float(ctx, base, key)
    assert kl[1.0] < 0.8 * kl[0.0], kl


def test_the_token_curve_measures_the_written_model_without_changing_its_training(tiny_settings):
    from safetensors.torch import load_file

    from agent_forge_core.evals.suite import perplexity
    from agent_forge_core.evals.text import natural_text

    common = ["cognate.enabled=false", "bitnet.enabled=true", "bitnet.steps=8", "bitnet.warmup=4",
              "bitnet.batch_size=4", "bitnet.max_len=96", "bitnet.measure_ptq=false", "bitnet.curve_tokens=512"]
    out = {}
    for every in (0, 3):
        ctx = make_context(tiny_settings(*common, f"bitnet.curve_every={every}"))
        (base,) = run_stage_on("import", [], ctx).outputs
        (key,) = run_stage_on("bitnet", [base], ctx).outputs
        out[every] = (ctx, key)
    (c0, k0), (c3, k3) = out[0], out[3]
    a, b = (load_file(str(c.store.get(k) / "model.safetensors")) for c, k in ((c0, k0), (c3, k3)))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)  # measuring moved nothing
    curve = c3.store.manifest(k3).info["curve"]
    assert "curve" not in c0.store.manifest(k0).info
    assert [p["step"] for p in curve] == [0, 3, 6, 8]
    assert 0 == curve[0]["tokens"] < curve[1]["tokens"] < curve[2]["tokens"] < curve[3]["tokens"]
    model, tok = load_model(str(c3.store.get(k3)))  # the last point is the packed model's perplexity
    ref = perplexity(model, tok, natural_text("validation"), 512, c3.settings.eval.ppl_window)
    assert curve[-1]["perplexity"] == pytest.approx(ref, rel=1e-3)
    # the QAT budget excludes the curve's measurements: without a curve they are the loop's whole time
    t0, t3 = (c.store.manifest(k).info["train"] for c, k in ((c0, k0), (c3, k3)))
    assert t0["qat_s"] == t0["wall_s"] and 0 < t3["qat_s"] < t3["wall_s"]


def test_the_default_share_weighs_natural_text_and_follows_a_mixture_without_it():
    from agent_forge_core.bitnet.settings import BitnetSettings
    from agent_forge_core.training.focuses import mixture_counts

    cfg = BitnetSettings()
    assert cfg.data_share == {"language": 3.0}
    assert BitnetSettings(data=["reasoning", "memory"]).data_share == {}  # the default share drops what data lacks
    # the 30-minute run's 960 sequences: half natural text, the tasks a sixth each
    assert mixture_counts(960, cfg.data, cfg.data_share) == {
        "language": 480, "reasoning": 160, "memory": 160, "instruction": 160}
