"""The loop stage (issue 15) on the tiny model: the phase gate rolls a bad phase back, a killed loop resumes
bit-identically, the self-model head at weight 0 changes nothing, a BitNet input comes out a BitNet checkpoint
whose packed reload computes the in-memory model's logits, distilled from its float ancestor."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agent_forge_core.context import make_context
from agent_forge_core.formats.bitnet import detect as is_bitnet
from agent_forge_core.loop.phases import Trainer, run_phase, train_steps
from agent_forge_core.loop.settings import LoopSettings, PhaseSettings
from agent_forge_core.bitnet.bitlinear import set_kernel
from agent_forge_core.loop.stage import (HISTORY_FILE, PLOT_FILE, artifacts, load_input, save_output, state_dir,
                                         validate)
from agent_forge_core.loop.state import LoopState
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on

SMALL = ["loop.enabled=true", "loop.val_examples=2", "loop.val_ppl_tokens=128", "loop.max_len=48",
         "loop.batch_size=2", "loop.dream.prompts=2", "loop.dream.max_new_tokens=8",
         "loop.curriculum.calibration_examples=2"]
THREE = "loop.phases=[{name: adapt, steps: 2}, {name: grokfast, steps: 2, grokfast: true}, " \
        "{name: perturb, steps: 3, noise: controlled, grokfast: true}]"


def _settings(tiny_settings, root: Path, *extra):
    return tiny_settings(*SMALL, f"store.url={root}/store", f"store.cache_dir={root}/cache", f"work_dir={root}/work",
                         *extra)


def _loop(s, progress=None):
    ctx = make_context(s, progress=progress)
    base = run_stage_on("import", [], ctx)
    return ctx, base, run_stage_on("loop", base.outputs, ctx)


def _phase_keys(root: Path) -> set[str]:
    return {p.name for p in (root / "store" / "checkpoints").glob("loop-*-p*")}


def test_a_deliberately_bad_phase_is_rolled_back(tiny_settings, tmp_path):
    # noise alone (x100, even x10000) hardly moves the weights: after clipping, AdamW steps about lr per weight
    # whatever the gradient's scale, so the bad phase is noisy and takes 10000x the lr as well
    s = _settings(tiny_settings, tmp_path, "loop.phases=[{name: adapt, steps: 2}, {name: bad, steps: 4, "
                  "noise: controlled, noise_multiplier: 10000, lr_scale: 10000}]")
    published = set()
    ctx, base, res = _loop(s, progress=lambda f, m: published.update(_phase_keys(tmp_path)))
    key = res.outputs[0]
    info = res.info[key]
    assert info["rollbacks"] == ["bad"]
    assert not published  # `auto`: the store shares the work dir's disk, where the exact state already is
    history = json.loads((ctx.store.get(key) / HISTORY_FILE).read_text())
    assert history[2]["score"] < history[1]["score"] - s.loop.tolerance  # it did damage...
    assert history[2]["gate"]["exact_drop"] > s.loop.tolerance  # in perplexity/NLL, not noise in accuracy
    # ...and the output is the model as it was after phase 1 (the store's phase checkpoints are gone by now)
    out, _ = load_model(str(ctx.store.get(key)))
    assert (ctx.store.get(key) / PLOT_FILE).is_file()
    ref_metrics = history[1]["metrics"]
    tr = Trainer(out, load_model(str(ctx.store.get(key)))[1], s.loop, s.eval, s.loop.lr, False)
    assert validate(tr, ctx, s.loop)[0] == ref_metrics
    assert not ctx.store.exists(f"{key}-p1") and not state_dir(ctx, key).parent.exists()
    (table,) = artifacts(ctx.store, key)  # the Prefect artifact: one row per phase, the input first
    assert [r["name"] for r in table.data] == ["input", "adapt", "bad"] and table.data[2]["rolled_back"]


def test_without_the_work_dir_state_a_rerun_continues_from_the_stored_phase(tiny_settings, tmp_path):
    class Killed(Exception):
        pass

    def kill(fraction, message):
        if "phase 2 grokfast: step 1/" in message:
            raise Killed(message)

    # a store on the work dir's disk gets no phase checkpoints unless asked (`auto`): here it stands for S3
    s = _settings(tiny_settings, tmp_path, THREE, "loop.runtime.publish_phases=always")
    with pytest.raises(Killed):
        _loop(s, progress=kill)
    ctx = make_context(s)
    (key,) = [k for k in ctx.store.list() if k.startswith("loop-") and k.endswith("-p1")]
    key = key.removesuffix("-p1")
    shutil.rmtree(state_dir(ctx, key))  # another machine: only the store is shared
    _, _, res = _loop(s)
    info = res.info[key]
    assert "from the stored checkpoint" in info["resumed"] and "optimizer" in info["resumed"]
    history = json.loads((ctx.store.get(key) / HISTORY_FILE).read_text())
    assert [r["name"] for r in history] == ["input", "adapt", "grokfast", "perturb"]


def test_a_killed_loop_resumes_bit_identically(tiny_settings, tmp_path):
    always = "loop.runtime.publish_phases=always"
    straight = _settings(tiny_settings, tmp_path / "a", THREE, "loop.runtime.keep_state=true", always)
    published = set()
    ctx_a, _, res_a = _loop(straight, progress=lambda f, m: published.update(_phase_keys(tmp_path / "a")))
    assert published == {f"{res_a.outputs[0]}-p1", f"{res_a.outputs[0]}-p2"}  # the last phase's is the output

    class Killed(Exception):
        pass

    def kill(fraction, message):
        if "phase 3 perturb: step 2/" in message:
            raise Killed(message)

    crashed = _settings(tiny_settings, tmp_path / "b", THREE, "loop.runtime.keep_state=true", always)
    with pytest.raises(Killed):
        _loop(crashed, progress=kill)
    key = res_a.outputs[0]
    sdir_b = state_dir(make_context(crashed), key)
    assert json.loads((sdir_b / "state.json").read_text())["phase"] == 2  # killed inside phase 3
    ctx_b = make_context(crashed)
    assert ctx_b.store.exists(f"{key}-p2") and not ctx_b.store.exists(f"{key}-p3")
    _, _, res_b = _loop(crashed)
    assert res_b.outputs == [key]
    a, b = load_file(str(state_dir(ctx_a, key) / "state.safetensors")), load_file(str(sdir_b / "state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("opt.") for k in a) and any(k.startswith("grokfast.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, AdamW moments, Grokfast EMA, RNG states
    ha = json.loads((ctx_a.store.get(key) / HISTORY_FILE).read_text())
    hb = json.loads((ctx_b.store.get(key) / HISTORY_FILE).read_text())
    for h in (ha, hb):
        assert all(r.pop("wall_s", 0) >= 0 for r in h)  # the one thing allowed to differ
    assert ha == hb  # every step's loss, norm, noise and signal; every validation
    assert res_a.metrics[key] == res_b.metrics[key]


def test_self_model_weight_zero_is_bit_identical_to_no_head(tiny_model_dir):
    from agent_forge_core.evals.settings import EvalSettings

    cfg = LoopSettings(self_model={"weight": 0.0}, max_len=48, batch_size=2)
    finals = []
    for head in (False, True):
        model, tok = load_model(str(tiny_model_dir))
        for p in model.parameters():
            p.requires_grad_(True)
        torch.manual_seed(0)
        tr = Trainer(model, tok, cfg, EvalSettings(), cfg.lr * 100, False)
        row = run_phase(0, PhaseSettings(name="p", steps=3, self_model=head), tr, LoopState())
        finals.append(({n: p.detach().clone() for n, p in model.named_parameters()}, row))
    (wa, ra), (wb, rb) = finals
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert "self_model" in rb and all(r["self_mse"] > 0 for r in rb["steps"])  # the head did run
    assert [r["loss"] for r in ra["steps"]] == [r["loss"] for r in rb["steps"]]


def test_bitnet_input_comes_out_bitnet_distilled_from_its_float_ancestor(tiny_settings, tmp_path):
    s = _settings(tiny_settings, tmp_path, "bitnet.enabled=true", "bitnet.steps=2", "bitnet.warmup=1",
                  "bitnet.batch_size=2", "bitnet.max_len=48", "bitnet.measure_ptq=false",
                  "loop.phases=[{name: adapt, steps: 2}, {name: perturb, steps: 2, noise: controlled}]",
                  "loop.tolerance=100")
    ctx = make_context(s)
    base = run_stage_on("import", [], ctx)
    bn = run_stage_on("bitnet", base.outputs, ctx)
    res = run_stage_on("loop", bn.outputs, ctx)
    key = res.outputs[0]
    info = res.info[key]
    assert info["input"] == "ternary" and info["teacher"] == base.outputs[0]
    folder = ctx.store.get(key)
    assert is_bitnet(folder)
    history = json.loads((folder / HISTORY_FILE).read_text())
    adapt, perturb = history[1], history[2]
    assert all("kl" in r and r["kl"] > 0 for r in adapt["steps"])  # distillation was on
    assert all(0 <= r["signal"] < 1 for r in perturb["steps"])  # the code-flip rate drove the controller
    # the write-back: latents trained in memory, saved packed, reloaded -> the in-memory model's logits exactly
    model, tok, ternary, fmt = load_input(Path(folder), ctx)
    assert ternary and fmt == {"fmt": s.bitnet.packing, "embeddings": s.bitnet.embeddings}
    tr = Trainer(model, tok, s.loop, s.eval, s.loop.lr_bitnet, True)
    train_steps(0, s.loop.phases[0], tr, LoopState(), lambda step, cur: _batch(tok))
    ids = tok("Q: Records: cat=41; sun=7. What is the value of sun?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        in_memory = model.eval()(ids).logits
    save_output(model, tok, tmp_path / "out", True, fmt)
    packed, _ = load_model(str(tmp_path / "out"))
    set_kernel(packed, "dequant")
    with torch.no_grad():
        assert torch.equal(packed(ids).logits, in_memory)


def _batch(tok):
    from agent_forge_core.loop.data import pad_batch

    ids = tok("The quick brown fox jumps over the lazy dog.", add_special_tokens=False).input_ids
    return pad_batch([(ids, ids), (ids[:5], ids[:5])], tok.pad_token_id)
