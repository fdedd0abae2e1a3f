"""Integrity and security: remote code, broken models, damaged and racing checkpoints, resumed builds,
sticky EvoMerge failures, and clear one-line errors instead of tracebacks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from agent_forge_core.context import make_context
from agent_forge_core.errors import ConfigError, GateFailed, ModelLoadError
from agent_forge_core.stages.runner import run_stage_on

CUSTOM = '''
import os, pathlib
pathlib.Path(os.environ["AF_TEST_MARKER"]).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "llama"


class CustomLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


def test_remote_code_needs_the_machines_own_permission_and_is_never_published(tiny_settings, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    model = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomLM"}
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "custom.py").write_text(CUSTOM)
    marker = tmp_path / "marker"
    monkeypatch.setenv("AF_TEST_MARKER", str(marker))
    monkeypatch.delenv("AF_ALLOW_REMOTE_CODE", raising=False)
    s = tiny_settings(f"model.source={model}", "model.trust_remote_code=true")
    ctx = make_context(s)
    with pytest.raises(ConfigError, match="AF_ALLOW_REMOTE_CODE=1 in this machine's"):
        run_stage_on("import", [], ctx)
    assert not marker.exists() and ctx.store.list() == []
    monkeypatch.setenv("AF_ALLOW_REMOTE_CODE", "1")  # the worker's own environment allows it
    with pytest.raises(ModelLoadError, match="needs its own modeling code"):
        run_stage_on("import", [], ctx)
    assert marker.exists() and ctx.store.list() == []  # the code ran (allowed); nothing was published
    assert not list(Path(s.work_dir).rglob("*.py"))


def test_a_store_refuses_to_publish_code(tmp_path):
    from agent_forge_core.store import CheckpointStore, Manifest

    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"x")
    (d / "modeling_evil.py").write_text("import os")
    with pytest.raises(ValueError, match="executable files"):
        CheckpointStore(str(tmp_path / "s")).put("import-x", d, Manifest("", "import", [], "c", "v"))


def test_a_model_with_nan_weights_is_refused_at_import(tiny_settings, tiny_model_dir, tmp_path):
    model = tmp_path / "nan"
    shutil.copytree(tiny_model_dir, model)
    tensors = load_file(str(model / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("mlp.up_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(model / "model.safetensors"))
    ctx = make_context(tiny_settings(f"model.source={model}"))
    with pytest.raises(ModelLoadError, match=r"hold NaN or inf \(first: .*up_proj"):
        run_stage_on("import", [], ctx)
    assert ctx.store.list() == []


def test_non_finite_metrics_are_never_published(tiny_settings, monkeypatch):
    import agent_forge_core.stages.evaluation as evaluation  # how the runner evaluates a built model

    ctx = make_context(tiny_settings())
    monkeypatch.setattr(evaluation, "evaluate", lambda model, tok, cfg, **kw: {"perplexity": float("nan"), "recall": 0.1})
    with pytest.raises(GateFailed, match=r"non-finite metrics \(perplexity\)"):
        run_stage_on("import", [], ctx)
    assert ctx.store.list() == []


def test_a_damaged_checkpoint_is_rebuilt_not_reused(tiny_settings):
    ctx = make_context(tiny_settings())
    (key,) = run_stage_on("import", [], ctx).outputs
    folder = ctx.store.get(key)
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the weights: same size, another digest
    f.write_bytes(bytes(data))
    again = run_stage_on("import", [], ctx)
    assert not again.reused and ctx.store.verify(key) == []
    assert run_stage_on("import", [], ctx).reused  # and now it is reused as it is
    manifest = Path(ctx.settings.store.url) / "checkpoints" / key / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])  # a truncated manifest
    assert not run_stage_on("import", [], ctx).reused and ctx.store.verify(key) == []


def test_inspect_lists_bad_entries_and_verify_names_damage(tiny_settings, capsys):
    from flows.cli import main

    s = tiny_settings()
    ctx = make_context(s)
    (key,) = run_stage_on("import", [], ctx).outputs
    good = ["--set", f"store.url={s.store.url}"]
    assert main(["inspect", "--verify", *good]) == 0 and f"{key}" in capsys.readouterr().out
    (ctx.store.get(key) / "config.json").write_text("{}")
    assert main(["inspect", "--verify", *good]) == 1
    assert "DAMAGED: config.json" in capsys.readouterr().out
    (Path(s.store.url) / "checkpoints" / "cognate-bad" ).mkdir()
    (Path(s.store.url) / "checkpoints" / "cognate-bad" / "manifest.json").write_text("{not json")
    assert main(["inspect", "--list", *good]) == 0
    out = capsys.readouterr().out
    assert "cognate-bad" in out and "BAD MANIFEST" in out and key in out


@pytest.mark.parametrize("case", ["env-section", "env-list", "ppl-window", "traversal", "absolute", "export-file",
                                  "garbage-merge"])
def test_bad_input_is_one_error_line_with_exit_2(case, tmp_path, tiny_model_dir, monkeypatch, capsys):
    from flows.cli import main

    store = ["--set", f"store.url={tmp_path}/store"]
    argv = {
        "env-section": ["config", "show"],
        "env-list": ["config", "show"],
        "ppl-window": ["config", "show", "--set", "eval.ppl_tokens=100", "--set", "eval.ppl_window=256"],
        "traversal": ["inspect", "../x", *store],
        "absolute": ["export", "/etc/passwd", str(tmp_path / "out"), *store],
        "export-file": ["export", "import-x", str(tmp_path / "a-file"), *store],
        "garbage-merge": ["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")],
    }[case]
    if case == "env-section":
        monkeypatch.setenv("AF_COGNATE", "notjson")
    if case == "env-list":
        monkeypatch.setenv("AF_EVAL__TASKS", "arithmetic")
    if case == "export-file":
        (tmp_path / "a-file").write_text("x")
    if case == "garbage-merge":
        bad = tmp_path / "garbage"
        shutil.copytree(tiny_model_dir, bad)
        (bad / "model.safetensors").write_bytes(b"garbage!garbage!garbage")
        (tmp_path / "r.yaml").write_text(f"merge_method: linear\nmodels:\n  - model: {bad}\n    parameters: {{weight: 1}}\n"
                                         f"  - model: {tiny_model_dir}\n    parameters: {{weight: 1}}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3 and err[0].startswith("error: "), err
    expect = {"env-section": "AF_COGNATE is not valid", "env-list": "AF_EVAL__TASKS is not valid",
              "ppl-window": "ppl_tokens (100) must be at least ppl_window (256)", "traversal": "invalid checkpoint key '../x'",
              "absolute": "invalid checkpoint key '/etc/passwd'", "export-file": "is a file",
              "garbage-merge": "not a valid safetensors file"}[case]
    assert expect in "\n".join(err)


def test_evomerge_failures_are_not_stored_and_a_rerun_evaluates_them_again(tiny_settings, monkeypatch):
    import agent_forge_core.evomerge.candidate as candidate
    from agent_forge_core.errors import CheckpointCorrupted
    from agent_forge_core.evomerge.search import EvoMergeFailed

    s = tiny_settings("cognate.focuses=[reasoning,memory]", "evomerge.enabled=true", "evomerge.population=2",
                      "evomerge.generations=2", "evomerge.candidate_eval.n_examples=2",
                      "evomerge.candidate_eval.ppl_tokens=128", "evomerge.gates={}")
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    cogs = run_stage_on("cognate", [base], ctx).outputs
    real = candidate.run_merge

    def damaged(recipe, out, folders=None, **kw):
        raise CheckpointCorrupted("checkpoint cognate-x: file 'model.safetensors' has sha256 0000...")

    monkeypatch.setattr(candidate, "run_merge", damaged)
    with pytest.raises(EvoMergeFailed, match=r"every EvoMerge candidate failed \(4\); the first error: "
                                             r"CheckpointCorrupted: checkpoint cognate-x.*history.json"):
        run_stage_on("evomerge", cogs, ctx)
    assert not [p for p in Path(s.store.url).rglob("candidates/*.json")]  # no failure was stored
    monkeypatch.setattr(candidate, "run_merge", real)  # the user fixed the input; a plain rerun recovers
    res = run_stage_on("evomerge", cogs, ctx)
    (key,) = res.outputs
    history = json.loads((ctx.store.get(key) / "evomerge_history.json").read_text())
    assert [c["status"] for c in history["candidates"]] == ["ok"] * 4
    assert len(list(Path(s.store.url).rglob("candidates/*.json"))) == 4


def _digests(ctx, key) -> dict[str, str]:
    return {n: f["sha256"] for n, f in ctx.store.manifest(key).files.items()}


class Interrupted(Exception):
    pass


def test_interrupted_and_resumed_builds_equal_uninterrupted_ones_byte_for_byte(tiny_settings, tmp_path, monkeypatch):
    """Cognate built in two goes (its variants a subset at a time) and EvoMerge resumed after a kill mid-search
    publish the same bytes as uninterrupted builds. Only EvoMerge's history differs, in its timestamps."""
    import agent_forge_core.cognate.stage as cognate_stage
    from agent_forge_core.store import CheckpointStore

    extra = ("cognate.focuses=[reasoning,memory,language]", "evomerge.enabled=true", "evomerge.population=2",
             "evomerge.generations=2", "evomerge.candidate_eval.n_examples=2", "evomerge.candidate_eval.ppl_tokens=128",
             "evomerge.gates={}")
    ref = make_context(tiny_settings(*extra, f"store.url={tmp_path}/ref", f"work_dir={tmp_path}/w1"))
    (base,) = run_stage_on("import", [], ref).outputs
    cogs = run_stage_on("cognate", [base], ref).outputs
    (evo,) = run_stage_on("evomerge", cogs, ref).outputs

    ctx = make_context(tiny_settings(*extra, f"store.url={tmp_path}/resumed", f"work_dir={tmp_path}/w2"))
    assert run_stage_on("import", [], ctx).outputs == [base]
    real_merge = cognate_stage.merge_lora
    made = []

    def killed_after_the_first(peft_model):
        if made:
            raise Interrupted()
        made.append(1)
        return real_merge(peft_model)

    monkeypatch.setattr(cognate_stage, "merge_lora", killed_after_the_first)
    with pytest.raises(Interrupted):
        run_stage_on("cognate", [base], ctx)
    assert [k for k in ctx.store.list() if k.startswith("cognate-")] == [cogs[0]]
    monkeypatch.setattr(cognate_stage, "merge_lora", real_merge)
    assert run_stage_on("cognate", [base], ctx).outputs == cogs  # the other two, built as a subset
    for k in cogs:
        assert _digests(ctx, k) == _digests(ref, k), k

    real_write = CheckpointStore.write_file

    def killed_after_generation_0(self, relpath, data):
        real_write(self, relpath, data)
        if relpath.endswith("/history.json"):
            raise Interrupted()

    monkeypatch.setattr(CheckpointStore, "write_file", killed_after_generation_0)
    with pytest.raises(Interrupted):
        run_stage_on("evomerge", cogs, ctx)
    monkeypatch.setattr(CheckpointStore, "write_file", real_write)
    assert run_stage_on("evomerge", cogs, ctx).outputs == [evo]
    a, b = _digests(ctx, evo), _digests(ref, evo)
    assert {n for n in a if a[n] != b[n]} == {"evomerge_history.json"}

    def without_times(key):
        h = json.loads((make_context(key[0].settings).store.get(key[1]) / "evomerge_history.json").read_text())
        for c in h["candidates"]:
            for t in ("started_at", "finished_at", "wall_s"):
                c.pop(t, None)
        return h

    assert without_times((ctx, evo)) == without_times((ref, evo))


def test_a_killed_run_leaves_a_server_and_scratch_that_the_next_run_cleans(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import TINY_OVERRIDES
    from flows.ephemeral import _alive, ephemeral_servers, orphaned_servers

    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    sets = [f"model.source={tiny_model_dir}", f"store.url={tmp_path}/store", f"work_dir={tmp_path}/work",
            *TINY_OVERRIDES, "cognate.steps=20000", "cognate.focuses=[memory]"]
    argv = [sys.executable, "-m", "flows.cli", "run", *sum((["--set", o] for o in sets), [])]
    log = tmp_path / "run.log"
    run = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def servers() -> list[int]:
        return sorted(ephemeral_servers(str(home)))

    deadline = time.monotonic() + 240
    try:
        # Until its server answers (a stage only writes scratch after the run reached the API) and its scratch
        # folder exists (from the first stage's save until the process ends; the files in it live for well
        # under a second, too briefly to poll for). The cognate's 20000 steps keep the run going for minutes.
        # Prefect restarts a server that lost a port race, so the pid is read again right before the kill,
        # and the orphan is taken from what is left after it.
        while time.monotonic() < deadline:
            assert run.poll() is None, f"the run ended before the kill: {log.read_text()[-2000:]}"
            if servers() and any((tmp_path / "work").glob(f"proc-*-{run.pid}")):
                break
            time.sleep(0.5)
        assert servers(), "the run never started its ephemeral server"
        run.send_signal(signal.SIGKILL)
        run.wait(30)
        time.sleep(1)
        left = orphaned_servers(str(home))
        assert len(left) == 1 and left == servers(), (left, servers())  # the leftover server
        server = left[0]
        assert list((tmp_path / "work").glob(f"proc-*-{run.pid}"))  # and the leftover scratch
        again = subprocess.run([*argv[:-4], "--set", "cognate.steps=2", "--set", "cognate.focuses=[memory]"],
                               env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"pid {server}" in again.stderr and not _alive(server)
        assert not list((tmp_path / "work").glob(f"proc-*-{run.pid}"))
    finally:
        if run.poll() is None:
            run.kill()
        for pid in servers():  # whatever a failed assertion left behind
            os.kill(pid, signal.SIGKILL)


def test_a_zombie_counts_as_gone():
    """A container whose PID 1 does not reap leaves exited processes as zombies; signal 0 still reaches
    them, so liveness must read /proc, or reaping an orphaned server would wait for a process that is gone."""
    import os
    import subprocess
    import sys
    import time

    from agent_forge_core.processes import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert pid_alive(os.getpid())
    deadline = time.monotonic() + 30
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
