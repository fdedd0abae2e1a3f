import os
import json
from pathlib import Path

import pytest

from agent_forge_core.errors import CheckpointCorrupted, CheckpointNotFound
from agent_forge_core.keys import checkpoint_key
from agent_forge_core.store import CheckpointStore, Manifest


def _folder(tmp_path: Path, name="src") -> Path:
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\x00\x01weights" * 1000)
    (d / "config.json").write_text(json.dumps({"a": 1}))
    (d / "sub" / "extra.txt").write_text("hello")
    return d


def _manifest(stage="cognate", parents=("import-x",)):
    return Manifest(key="", stage=stage, parents=list(parents), config_hash="c" * 64, code_version="0.1.0+t",
                    metrics={"perplexity": 12.5})


def _round_trip(store: CheckpointStore, tmp_path: Path) -> None:
    src = _folder(tmp_path)
    key = checkpoint_key("cognate", ["import-x"], "c" * 64, "0.1.0+t", "memory")
    assert not store.exists(key)
    m = store.put(key, src, _manifest())
    assert store.exists(key) and store.list() == [key]
    assert set(m.files) == {"model.safetensors", "config.json", "sub/extra.txt"}
    got = store.get(key)
    for name in m.files:
        assert (got / name).read_bytes() == (src / name).read_bytes()
    back = store.manifest(key)
    assert back.metrics == {"perplexity": 12.5} and back.parents == ["import-x"] and back.stage == "cognate"
    assert back.files["model.safetensors"]["size"] == (src / "model.safetensors").stat().st_size


def test_local_round_trip(tmp_path):
    _round_trip(CheckpointStore(str(tmp_path / "store")), tmp_path)


def test_a_consumed_folder_is_moved_into_a_local_store_and_verifies(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    src = _folder(tmp_path)
    want = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    inode = (src / "model.safetensors").stat().st_ino
    m = store.put("cognate-memory-abc", src, _manifest(), consume=True)
    got = store.get("cognate-memory-abc")
    assert {n: (got / n).read_bytes() for n in m.files} == want and store.verify("cognate-memory-abc") == []
    assert (got / "model.safetensors").stat().st_ino == inode and not (src / "model.safetensors").exists()


def test_keys_are_content_derived():
    k = checkpoint_key("cognate", ["import-a"], "h1", "v1", "memory")
    assert k == checkpoint_key("cognate", ["import-a"], "h1", "v1", "memory") and k.startswith("cognate-memory-")
    others = {checkpoint_key("cognate", ["import-b"], "h1", "v1", "memory"),
              checkpoint_key("cognate", ["import-a"], "h2", "v1", "memory"),
              checkpoint_key("cognate", ["import-a"], "h1", "v2", "memory"),
              checkpoint_key("cognate", ["import-a"], "h1", "v1", "language")}
    assert k not in others and len(others) == 4


def test_interrupted_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path / "store"))
    src = _folder(tmp_path)
    calls = {"n": 0}
    real = store._upload

    def flaky(a, b, *rest):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("connection reset while uploading")
        real(a, b, *rest)

    monkeypatch.setattr(store, "_upload", flaky)
    with pytest.raises(OSError):
        store.put("cognate-k1", src, _manifest())
    assert not store.exists("cognate-k1") and store.list() == []
    with pytest.raises(CheckpointNotFound, match="no checkpoint 'cognate-k1'"):
        store.get("cognate-k1")
    assert not any((tmp_path / "store" / "checkpoints" / "cognate-k1").glob("data-*"))  # its prefix was removed
    monkeypatch.setattr(store, "_upload", real)
    store.put("cognate-k1", src, _manifest())
    assert store.exists("cognate-k1") and store.get("cognate-k1").is_dir()


def _data_dir(store, key) -> Path:
    return Path(store._data(store.manifest(key)))


def test_corrupted_file_is_detected(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    store.put("cognate-k2", _folder(tmp_path), _manifest())
    assert store.verify("cognate-k2") == []
    f = _data_dir(store, "cognate-k2") / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupted, match=r"'model.safetensors' has sha256 .* delete .*cognate-k2"):
        store.get("cognate-k2")
    assert store.verify("cognate-k2", digests=False) == []  # same size: only the digest tells
    assert "model.safetensors: sha256" in store.verify("cognate-k2")[0]
    f.write_bytes(bytes(data[:-5]))
    assert "model.safetensors: 8995 bytes, the manifest records 9000" in store.verify("cognate-k2", digests=False)
    f.unlink()
    with pytest.raises(CheckpointCorrupted, match="is missing"):
        store.get("cognate-k2")
    assert store.verify("cognate-k2", digests=False) == ["model.safetensors: missing"]


def test_a_bad_manifest_is_a_clear_error_and_keys_are_names(tmp_path):
    from agent_forge_core.errors import InvalidKey

    store = CheckpointStore(str(tmp_path / "store"))
    store.put("cognate-k3", _folder(tmp_path), _manifest())
    (tmp_path / "store" / "checkpoints" / "cognate-k3" / "manifest.json").write_text('{"key": "cognate-k3", "sta')
    with pytest.raises(CheckpointCorrupted, match="manifest is not a valid manifest"):
        store.manifest("cognate-k3")
    assert "not a valid manifest" in store.verify("cognate-k3")[0]
    for bad in ("../x", "/etc/passwd", "a/b", "", ".hidden", "x..y"):
        with pytest.raises(InvalidKey, match="invalid checkpoint key"):
            store.exists(bad)


def test_existing_key_is_not_rewritten(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    m1 = store.put("import-k", _folder(tmp_path, "a"), _manifest("import", ()))
    m2 = store.put("import-k", _folder(tmp_path, "b"), _manifest("import", ()))
    assert m1.created_at == m2.created_at


def test_lineage(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    store.put("import-a", _folder(tmp_path, "a"), _manifest("import", ()))
    store.put("cognate-b", _folder(tmp_path, "b"), _manifest("cognate", ("import-a",)))
    assert [m.key for m in store.lineage("cognate-b")] == ["import-a", "cognate-b"]


def test_s3_round_trip(tmp_path, moto_s3):
    from agent_forge_core.config import load_settings

    s = load_settings(overrides=["store.url=s3://forge/runs", f"store.endpoint_url={moto_s3}", "store.key=test",
                                 "store.secret=test", "store.region=us-east-1", f"store.cache_dir={tmp_path}/cache"])
    store = CheckpointStore.from_settings(s.store)
    assert not store.is_local
    _round_trip(store, tmp_path)
    key = store.list()[0]
    assert store.fs.exists(f"forge/runs/checkpoints/{key}/manifest.json")
    assert store.verify(key) == []
    # a corrupted object in the bucket is caught when a fresh cache downloads it
    store.fs.pipe_file(f"{store._data(store.manifest(key))}/config.json", b'{"a": 2}')
    fresh = CheckpointStore.from_settings(s.store.model_copy(update={"cache_dir": str(tmp_path / "cache2")}))
    with pytest.raises(CheckpointCorrupted, match="config.json"):
        fresh.get(key)
    assert not (tmp_path / "cache2" / key).exists()


def test_s3_credentials_from_a_prefect_secret_block(tiny_settings, monkeypatch):
    """The Secret block alternative to the worker's environment: the flow puts its value where s3fs reads it."""
    from prefect.blocks.system import Secret

    from agent_forge_core.errors import ConfigError
    from tasks.credentials import apply_credentials_block

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    Secret(value={"key": "AKIA-block", "secret": "s3cr3t"}).save("forge-s3-test", overwrite=True)
    settings = tiny_settings("store.credentials_block=forge-s3-test")
    assert "s3cr3t" not in json.dumps(settings.portable_dict())  # only the block's name travels
    apply_credentials_block(settings)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIA-block" and os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    with pytest.raises(ConfigError, match="no Secret block named 'missing'"):
        apply_credentials_block(tiny_settings("store.credentials_block=missing"))
    Secret(value="just-a-string").save("forge-s3-bad", overwrite=True)
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        apply_credentials_block(tiny_settings("store.credentials_block=forge-s3-bad"))


def _race(store: CheckpointStore, tmp_path: Path, monkeypatch) -> None:
    """Two writers of one key with different bytes; the first to start is slowed down between files, so
    the second publishes while the first is still uploading. One content per key must come out."""
    import threading
    import time as _time

    a, b = _folder(tmp_path, "a"), _folder(tmp_path, "b")
    (b / "model.safetensors").write_bytes(b"\x07other" * 1500)
    real = store._upload
    b_done = threading.Event()

    def slow(local, remote, *rest):
        real(local, remote, *rest)
        if str(local).startswith(str(a)):
            b_done.wait(30)  # the slow mover: A stalls mid-upload until B has published
            _time.sleep(0.05)

    monkeypatch.setattr(store, "_upload", slow)
    out = {}

    def write(name, folder):
        out[name] = store.put("cognate-race", folder, _manifest())
        if name == "b":
            b_done.set()

    ta = threading.Thread(target=write, args=("a", a))
    ta.start()
    _time.sleep(0.2)
    tb = threading.Thread(target=write, args=("b", b))
    tb.start()
    ta.join(60)
    tb.join(60)
    assert "kept_existing" not in out["b"].info and out["a"].info.get("kept_existing") is True
    assert store.verify("cognate-race") == []
    got = store.get("cognate-race")
    assert (got / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()  # all of B, none of A
    prefixes = [p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store._ckpt("cognate-race"), detail=False)]
    assert sorted(p for p in prefixes if p.startswith("data-")) == [store.manifest("cognate-race").data]


def test_two_racing_writers_publish_one_content_locally(tmp_path, monkeypatch):
    _race(CheckpointStore(str(tmp_path / "store")), tmp_path, monkeypatch)


def test_two_racing_writers_publish_one_content_on_s3(tmp_path, moto_s3, monkeypatch):
    store = CheckpointStore(f"s3://forge/race-{tmp_path.name}", {"key": "test", "secret": "test", "client_kwargs": {
        "endpoint_url": moto_s3, "region_name": "us-east-1"}}, str(tmp_path / "cache"))
    _race(store, tmp_path, monkeypatch)


def test_stale_prefixes_of_dead_writers_are_cleaned(tmp_path):
    store = CheckpointStore(str(tmp_path / "store"))
    store.put("import-k", _folder(tmp_path), _manifest("import", ()))
    from agent_forge_core.processes import host_tag

    host = host_tag()
    base = tmp_path / "store" / "checkpoints"
    dead, live = base / "import-k" / f"data-{host}-999999-aaaa", base / "cognate-x" / f"data-{host}-{os.getpid()}-bbbb"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "w.bin").write_bytes(b"x")
    removed = store.clean_stale(alive=lambda pid: pid == os.getpid())
    assert removed == [f"import-k/{dead.name}"] and live.is_dir() and store.verify("import-k") == []
