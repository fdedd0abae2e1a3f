import pytest

from agent_forge_core.config import load_settings, settings_class
from agent_forge_core.errors import ConfigError
from agent_forge_core.keys import config_hash
from agent_forge_core.stages.plan import plan
from agent_forge_core.stages.registry import stage_names


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for k in list(__import__("os").environ):
        if k.startswith("AF_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_quick_profile():
    s = load_settings()
    assert s.profile == "quick"
    assert s.model.source == "smollm2-135m-instruct"
    assert s.store.url == ".forge/store"
    assert s.cognate.enabled and s.cognate.focuses == ["reasoning", "memory"]  # full: also language
    assert s.cognate.steps == settings_class().model_fields["cognate"].default_factory().steps
    # the whole chain, but BitNet: off in quick with its measured reason, on in full
    assert plan(s) == ["import", "cognate", "evomerge", "quietstar", "loop", "baking", "experts", "compression"]
    assert not s.bitnet.enabled and "x6.0" in type(s.bitnet).off_note


def test_full_profile_raises_budgets():
    q, f = load_settings(), load_settings(profile="full")
    assert f.profile == "full" and f.cognate.steps > q.cognate.steps and f.eval.n_examples > q.eval.n_examples
    assert plan(f) == stage_names()  # every stage, BitNet included
    assert f.evomerge.finalists > q.evomerge.finalists and f.quietstar.steps > q.quietstar.steps
    assert f.compression.target_bpw == "auto" and f.compression.finetune.enabled and not q.compression.finetune.enabled


def test_precedence_yaml_env_cli(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cognate:\n  steps: 11\n  lr: 0.01\neval:\n  n_examples: 5\n")
    s = load_settings(cfg)
    assert (s.cognate.steps, s.cognate.lr, s.eval.n_examples) == (11, 0.01, 5)
    monkeypatch.setenv("AF_COGNATE__STEPS", "22")
    s = load_settings(cfg)
    assert s.cognate.steps == 22 and s.cognate.lr == 0.01  # env beats YAML, other YAML keys kept
    s = load_settings(cfg, ["cognate.steps=33", "cognate.lora.r=4", "cognate.focuses=[memory]"])
    assert (s.cognate.steps, s.cognate.lora.r, s.cognate.focuses) == (33, 4, ["memory"])


def test_profile_below_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile: full\ncognate:\n  steps: 7\n")
    s = load_settings(cfg)
    assert s.profile == "full" and s.cognate.steps == 7 and s.eval.n_examples == 200
    s = load_settings(cfg, profile="quick")  # the --profile flag beats the file, and the field agrees
    assert s.profile == "quick" and s.eval.n_examples == 24 and s.cognate.steps == 7
    monkeypatch.setenv("AF_PROFILE", "full")
    assert load_settings(profile="quick").profile == "quick" and load_settings().profile == "full"


def test_shared_dotenv_with_prefect_keys_is_fine(tmp_path):
    (tmp_path / ".env").write_text("PREFECT_API_URL=http://127.0.0.1:4200/api\nSOMETHING_ELSE=1\nAF_COGNATE__STEPS=9\n")
    assert load_settings().cognate.steps == 9


@pytest.mark.parametrize(
    "override, needle",
    [
        ("cognate.steps=-1", "cognate.steps: got -1"),
        ("cognate.steps=abc", "cognate.steps: got 'abc'"),
        ("cognate.stepz=3", "cognate.stepz: unknown setting"),
        ("cognate.focuses=[dreaming]", "unknown focus(es) ['dreaming']"),
        ("eval.tasks=[chess]", "unknown task(s) ['chess']"),
        ("model.dtype=int3", "model.dtype: got 'int3'"),
        ("nosuch.key=1", "unknown section 'nosuch'"),
        ("profile=turbo", "allowed profiles are ['full', 'quick']"),
        ("cognate.steps", "not of the form section.key=value"),
    ],
)
def test_invalid_values_name_path_value_and_allowed(override, needle):
    with pytest.raises(ConfigError) as e:
        load_settings(overrides=[override])
    assert needle in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cognate: [steps: 3\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(lst)


def test_enabling_an_unbuilt_stage_is_refused_before_work(monkeypatch):
    from agent_forge_core.stages import registry

    # every stage of the pipeline is built now: a name alone in the registry stands for one that is not
    monkeypatch.setattr(registry, "_pipeline", [*registry._pipeline, "future"])
    s = load_settings(overrides=["future.enabled=true"])
    with pytest.raises(ConfigError, match=r"'future' stage is not built.*set future.enabled=false"):
        plan(s)


def test_secrets_are_masked_in_config_show():
    s = load_settings(overrides=["store.key=AKIAXXXX", "store.secret=topsecret"])
    shown = str(s.public_dict())
    assert "topsecret" not in shown and "AKIAXXXX" not in shown
    assert s.store.secret.get_secret_value() == "topsecret"


def test_config_hash_is_stable_and_sensitive():
    a, b = load_settings(), load_settings()
    assert config_hash(a.cognate) == config_hash(b.cognate)
    c = load_settings(overrides=["cognate.lr=0.5"])
    assert config_hash(a.cognate) != config_hash(c.cognate)
