"""The forge flow in Prefect's ephemeral mode: end to end, resume after a failure, cached reruns."""
from collections import Counter
from pathlib import Path

import pytest

from agent_forge_core.errors import GateFailed, ModelLoadError
from agent_forge_core.stages.registry import stage_names
from agent_forge_core.store import CheckpointStore
from conftest import TINY_OVERRIDES


@pytest.fixture
def overrides(tmp_path, tiny_model_dir):
    return [f"model.source={tiny_model_dir}", f"store.url={tmp_path}/store", f"store.cache_dir={tmp_path}/cache",
            f"work_dir={tmp_path}/work", *TINY_OVERRIDES]


def test_failure_at_stage_k_then_resume_then_cached_rerun(overrides, body_calls, monkeypatch, tmp_path):
    from flows.forge import forge
    import agent_forge_core.cognate.stage as cognate

    real_train = cognate.train_lora

    def broken(*a, **k):
        raise RuntimeError("injected failure in cognate")

    monkeypatch.setattr(cognate, "train_lora", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        forge(overrides=overrides)
    store = CheckpointStore(f"{tmp_path}/store")
    assert [k.split("-")[0] for k in store.list()] == ["import"]  # no partial cognate checkpoint
    assert body_calls == Counter({"import": 1, "cognate": 1})  # RuntimeError is not transient: no retry

    monkeypatch.setattr(cognate, "train_lora", real_train)
    body_calls.clear()
    out = forge(overrides=overrides)
    assert body_calls == Counter({"cognate": 1})  # import came back from the cache; its body did not run
    assert out["stages"] == ["import", "cognate"] and len(out["finals"]) == 3
    assert all(store.exists(k) for k in out["finals"])
    for k in out["finals"]:
        m = store.manifest(k)
        assert m.stage == "cognate" and {"perplexity", "recall", "arithmetic", "instruction"} <= set(m.metrics)
    report = Path(out["report"])
    assert report.is_file() and "## Lineage" in report.read_text()
    assert report.parent.name.startswith("cognate-set-")  # the whole run's report, not the first cognate's
    # every pipeline stage is listed, in order, as run, cached or off with the reason
    assert list(out["statuses"]) == stage_names()
    assert out["statuses"]["import"] == "cached" and out["statuses"]["cognate"] == "run"
    assert {s for n, s in out["statuses"].items() if n not in ("import", "cognate")} == {"off"}
    rows = {r.split(" | ")[0].lstrip("| "): r for r in report.read_text().split("## Stages")[1].split("\n## ")[0].split("\n")
            if r.startswith("| ") and " | " in r}
    assert "`bitnet.enabled=false`" in rows["bitnet"] and "perplexity 111" in rows["bitnet"]  # its measured note
    for k in out["finals"]:
        m = store.manifest(k)
        row = rows[f"cognate[{m.info['variant']}]"]
        base = store.manifest(m.parents[0])
        ratio = m.metrics["perplexity"] / base.metrics["perplexity"]
        assert f"×{ratio:.2f} input = base" in row and f"{m.info['wall_s']:.0f} s" in row
        bits = 8 * sum(f["size"] for n, f in m.files.items() if n.endswith(".safetensors")) / base.info["parameters"]
        assert f"| {bits:.2f} |" in row and 31 < bits < 33  # float32 weights
    assert "(earlier run)" in rows["import"]  # a cached stage shows the time its checkpoint took when built
    assert (report.parent / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["stage"] for r in out["rows"]} == {"import", "cognate[reasoning]", "cognate[memory]", "cognate[language]"}

    body_calls.clear()
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "store" / "checkpoints").rglob("*"))
    again = forge(overrides=overrides)
    assert body_calls == Counter()  # a finished rerun runs no stage body at all
    assert again["finals"] == out["finals"]
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "store" / "checkpoints").rglob("*")) == before

    # the cache never outlives the checkpoints it points to: a deleted checkpoint is rebuilt
    import shutil

    shutil.rmtree(tmp_path / "store" / "checkpoints" / out["finals"][0])
    body_calls.clear()
    third = forge(overrides=overrides)
    assert body_calls == Counter({"cognate": 1}) and store.exists(third["finals"][0])


def test_gate_failure_fails_the_stage_and_writes_nothing(overrides, tmp_path):
    from flows.forge import forge

    with pytest.raises(GateFailed) as e:
        forge(overrides=[*overrides, "cognate.gates.recall=-1.0"])  # demands recall to rise by 1.0: impossible
    msg = str(e.value)
    assert "stage 'cognate' failed its quality gate" in msg and "recall:" in msg and "allowed at least" in msg
    store = CheckpointStore(f"{tmp_path}/store")
    assert [k.split("-")[0] for k in store.list()] == ["import"]


def test_missing_model_path_fails_clearly(overrides, tmp_path):
    from flows.cli import main

    with pytest.raises(ModelLoadError, match="does not exist"):
        from flows.forge import forge

        forge(overrides=[*overrides, f"model.source={tmp_path}/missing-model"])
    assert CheckpointStore(f"{tmp_path}/store").list() == []
    assert main(["run", *sum((["--set", o] for o in overrides), []), "--set", f"model.source={tmp_path}/nope"]) == 2


def test_transient_errors_retry_and_others_do_not():
    from agent_forge_core.errors import CheckpointCorrupted, ConfigError, TransientError
    from tasks.retry import is_transient

    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError()) and is_transient(TransientError("x"))
    assert is_transient(OSError("503 Slow Down"))
    for exc in (GateFailed("g"), ConfigError("c"), CheckpointCorrupted("d"), ModelLoadError("m"),
                FileNotFoundError("f"), RuntimeError("bug"), ValueError("v")):
        assert not is_transient(exc), exc


def test_transient_store_error_is_retried(overrides, body_calls, monkeypatch, tmp_path):
    from flows.forge import forge
    from agent_forge_core.store import CheckpointStore as Store

    real_put, failed = Store.put, []

    def flaky_put(self, key, folder, manifest, **kw):
        if not failed:
            failed.append(key)
            raise ConnectionError("simulated network drop during upload")
        return real_put(self, key, folder, manifest, **kw)

    monkeypatch.setattr(Store, "put", flaky_put)
    out = forge(overrides=[*overrides, "cognate.focuses=[memory]"])
    assert failed and body_calls["import"] == 2 and len(out["finals"]) == 1


def test_flow_with_s3_store(overrides, moto_s3, body_calls, monkeypatch, tmp_path):
    """Checkpoints, manifests and reports land in the bucket; a rerun reuses them (no Prefect record)."""
    from flows.forge import forge

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = [f"store.url=s3://forge/flow-{tmp_path.name}", f"store.endpoint_url={moto_s3}", "store.region=us-east-1",
          "cognate.focuses=[language]"]
    out = forge(overrides=[*overrides, *s3])
    store = CheckpointStore(f"s3://forge/flow-{tmp_path.name}",
                            {"client_kwargs": {"endpoint_url": moto_s3, "region_name": "us-east-1"}})
    assert len(store.list()) == 2 and store.manifest(out["finals"][0]).parents
    assert not store.fs.exists(f"forge/flow-{tmp_path.name}/prefect-results")
    assert out["report"].startswith("s3://") and store.fs.exists(out["report"].removeprefix("s3://"))
    body_calls.clear()
    again = forge(overrides=[*overrides, *s3])
    assert again["finals"] == out["finals"] and body_calls == Counter()  # manifests read back from S3


def test_flow_import_then_bitnet(overrides, tmp_path):
    from flows.forge import forge

    out = forge(overrides=[*overrides, "cognate.enabled=false", "bitnet.enabled=true", "bitnet.steps=4",
                           "bitnet.warmup=2", "bitnet.batch_size=4", "bitnet.max_len=64"])
    assert out["stages"] == ["import", "bitnet"]
    (final,) = out["finals"]
    m = CheckpointStore(f"{tmp_path}/store").manifest(final)
    # 1.6 bits per code plus a 32-bit scale per output row (the tiny model's rows are 64 and 128 wide)
    assert m.stage == "bitnet" and 1.6 + 32 / 128 < m.info["bits"]["bits_per_weight_ternary_layers"] < 1.6 + 32 / 64
    assert "bitnet.json" in m.files and "perplexity" in m.metrics


class _Plant:
    """Unpickling it creates a marker file: the proof that a record was deserialized with pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_record_in_the_store_never_runs(overrides, body_calls, tmp_path):
    """Anyone who can write the bucket could plant a Prefect result record declaring the pickle
    serializer; no stage result is ever read from a Prefect record, so nothing is unpickled."""
    import base64
    import hashlib
    import json
    import pickle

    from flows.forge import forge

    out = forge(overrides=[*overrides, "cognate.focuses=[memory]"])
    marker = tmp_path / "pwned"
    payload = base64.b64encode(pickle.dumps(_Plant(marker))).decode()
    record = {"metadata": {"storage_key": "x", "expiration": None, "prefect_version": "3.9.1", "storage_block_id": None,
                           "serializer": {"type": "pickle", "picklelib": "pickle"}}, "result": payload}
    results = tmp_path / "store" / "prefect-results"
    results.mkdir()
    stages = out["stages"]
    # where the 0.1 flow kept its cache records (sha256 of the stage and its keys), and a few more names
    names = [hashlib.sha256("\n".join([s, *ks]).encode()).hexdigest() for s in stages for ks in [out["finals"]]]
    for name in [*names, "cognate", "import", *(f"{i:032x}" for i in range(4))]:
        (results / name).write_text(json.dumps(record))
    body_calls.clear()
    again = forge(overrides=[*overrides, "cognate.focuses=[memory]"])
    assert again["finals"] == out["finals"] and body_calls == Counter()
    assert not marker.exists()
    assert all(again["reused"].values())


def test_credentials_given_to_run_never_reach_parameters_logs_store_or_reports(overrides, tmp_path, monkeypatch, capsys):
    """`agent-forge run --set store.key=... --set store.secret=...`: the run works and nothing it writes (Prefect's
    database and logs, the store, the report, the work dir) holds either value."""
    import os

    from flows.cli import main

    for var in ("AF_STORE__KEY", "AF_STORE__SECRET"):  # restored (unset) after the test
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    key, secret = "AKIAQQQQ5EEDKEY77", "s3cr3tZZZ9value"
    argv = ["run", *sum((["--set", o] for o in [*overrides, "cognate.focuses=[memory]"]), []),
            "--set", f"store.key={key}", "--set", f"store..secret={secret}"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert key not in out.out + out.err and secret not in out.out + out.err
    written = [p for root in (os.environ["PREFECT_HOME"], tmp_path) for p in Path(root).rglob("*") if p.is_file()]
    assert any(p.name.startswith("prefect.db") for p in written)
    for p in written:
        data = p.read_bytes()
        assert key.encode() not in data and secret.encode() not in data, p
