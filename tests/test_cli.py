import json

import pytest
import torch

from agent_forge_core.context import make_context
from agent_forge_core.stages.runner import run_stage_on
from flows.cli import main


def test_bad_yaml_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cognate:\n  steps: [1,\n")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and "is not valid YAML" in err


def test_config_show_and_stages(capsys):
    assert main(["config", "show", "--set", "cognate.steps=5", "--set", "store.secret=hunter2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["cognate"]["steps"] == 5 and "hunter2" not in json.dumps(shown)
    assert main(["stages"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("import") and all(" built " in lines[i] for i in range(1, 9))
    assert lines[5].startswith("loop") and lines[6].startswith("baking")


def test_inspect_eval_export(tiny_settings, tmp_path, capsys):
    s = tiny_settings()
    ctx = make_context(s)
    key = run_stage_on("import", [], ctx).outputs[0]
    common = ["--set", f"store.url={s.store.url}", "--set", "eval.n_examples=4", "--set", "eval.ppl_tokens=256",
              "--set", "eval.ppl_window=64", "--set", "eval.max_new_tokens=4"]
    assert main(["inspect", key, *common]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\nlineage:")[0])["key"] == key and f"lineage: {key}" in out
    assert main(["eval", key, "--split", "validation", "--record", *common]) == 0
    capsys.readouterr()
    assert "perplexity@validation" in ctx.store.manifest(key).metrics
    dest = tmp_path / "exported"
    assert main(["export", key, str(dest), *common]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(dest)
    tok = AutoTokenizer.from_pretrained(dest)
    from agent_forge_core.model_io import load_model

    ref, _ = load_model(str(ctx.store.get(key)))
    ids = tok("Q: 3 + 4 = 7.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert main(["export", key, str(dest), *common]) == 2  # refuses to overwrite a non-empty folder


def test_deploy_trigger_worker_refuse_without_a_server_and_credentials_as_parameters(capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for argv in (["deploy"], ["trigger"], ["worker", "--pool", "gpu"]):
        assert main(argv) == 2
        assert "PREFECT_API_URL is not set" in capsys.readouterr().err
    for secret in ("store.secret=hunter2", "store..secret=hunter2", "store={secret: hunter2}"):
        assert main(["trigger", "--set", secret]) == 2
        err = capsys.readouterr().err
        assert "store.secret: a credential must not be" in err and "AWS_SECRET_ACCESS_KEY" in err and "hunter2" not in err
    assert main(["deploy", "--set", "deploy.timezone=Mars/Olympus"]) == 2
    assert "deploy.timezone" in capsys.readouterr().err


def test_portable_settings_leave_credentials_to_the_receiver(monkeypatch, tmp_path):
    from agent_forge_core.config import ForgeSettings, load_settings

    s = load_settings(overrides=["store.key=K1", "store.secret=S1", f"store.url={tmp_path}/rel/../store",
                                 "evomerge.population=5"])
    data = s.portable_dict()
    assert "K1" not in json.dumps(data) and "key" not in data["store"] and data["store"]["url"] == f"{tmp_path}/store"
    monkeypatch.setenv("AF_STORE__SECRET", "S2")
    back = ForgeSettings.from_portable(json.loads(json.dumps(data)))
    assert back.store.secret.get_secret_value() == "S2" and back.store.key is None
    assert back.evomerge.population == 5 and back.public_dict()["cognate"] == s.public_dict()["cognate"]


def test_the_deployment_schema_refuses_credentials_and_helps_the_ui_form():
    import jsonschema
    from prefect.utilities.callables import parameter_schema

    from flows.deploy import guard_parameters
    from flows.forge import forge

    schema = guard_parameters(parameter_schema(forge.fn).model_dump_for_openapi())
    assert all(schema["properties"][p]["description"] for p in ("config", "profile", "overrides"))
    assert schema["properties"]["overrides"]["examples"] == [["cognate.steps=60", "store.url=s3://bucket/prefix"]]
    ok = ["cognate.steps=60", "store.url=s3://bucket/prefix", "store.endpoint_url=http://x", "eval.seed=1"]
    jsonschema.validate({"overrides": ok}, schema)
    for bad in ("store.secret=x", "store.key=AKIA", " store . secret = x", "store..secret=x",
                'store={"secret": "x", "key": "y"}', "store={secret: x}"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"overrides": ["cognate.steps=3", bad]}, schema)


def test_credentials_are_found_at_any_nesting():
    from agent_forge_core.credentials import secret_overrides, without_secrets

    got = secret_overrides(["store.secret=s1", "store..key=k1", "cognate.steps=3"])
    assert got == {"store.secret": "s1", "store.key": "k1"}
    assert secret_overrides(['store={"secret": "s2", "url": "x"}']) == {"store.secret": "s2"}
    assert without_secrets(["store.secret=s1", "cognate.steps=3", "store.url=x"]) == ["cognate.steps=3", "store.url=x"]


def test_chat_opens_a_stored_checkpoint_as_an_agent(tiny_settings, tmp_path, monkeypatch, capsys):
    import io
    import sys

    s = tiny_settings()
    key = run_stage_on("import", [], make_context(s)).outputs[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2+2?\n/tools\n/quit\n"))
    argv = ["chat", key, "--set", f"store.url={s.store.url}", "--set", f"agent.memory={tmp_path}/m.sqlite",
            "--set", f"agent.index_dir={tmp_path}/idx", "--set", "agent.max_new_tokens=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("agent ready: tools calc, mem_write, mem_read, search") and "search: Search the documentation" in out
