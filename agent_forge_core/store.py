"""Checkpoint store over fsspec: a local directory by default, `s3://bucket/prefix` through s3fs.

Layout under the root:
    checkpoints/<key>/manifest.json       <- published last; a checkpoint exists iff its manifest does
    checkpoints/<key>/<data>/<files...>   <- the files, under the prefix the manifest names (`data`)
    reports/<key>/...                     <- forge reports

One content per key, whatever the writers: a writer uploads every file under its own prefix
(`data-<host>-<pid>-<uuid>`), invisible until a manifest names it, then publishes the manifest with an
exclusive create (a hard link locally; a conditional PUT, `If-None-Match: *`, on S3 and S3-compatible
servers that support it). A writer that loses the race deletes its prefix and keeps the existing
checkpoint ("kept existing"). A reader sees either no checkpoint or one writer's complete set of files;
an interrupted write leaves only an unnamed prefix, which `clean_stale` removes once its writer is gone.
Every file's size and sha256 are recorded and verified on load (`get`) and on demand (`verify`).
Checkpoints written before the data prefix existed (files beside the manifest, no `data` field) stay
readable.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from .errors import CheckpointCorrupted, CheckpointNotFound, InvalidKey
from .processes import host_tag, pid_alive

MANIFEST = "manifest.json"
DATA_PREFIX = "data-"
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CODE_SUFFIXES = (".py", ".pyc", ".so")  # never published: a checkpoint carries data, not code


@dataclass
class Manifest:
    key: str
    stage: str
    parents: list[str]
    config_hash: str
    code_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: float = 0.0
    data: str = ""  # the prefix (under the key) that holds the files; "" for the first layout

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls(**json.loads(text))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _local_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def writer_prefix() -> str:
    """This writer's data prefix: host and pid say who wrote it (and whether it may still be writing)."""
    return f"{DATA_PREFIX}{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key) or ".." in key:
        raise InvalidKey(f"invalid checkpoint key {key!r}: keys are names like cognate-memory-0123abcd4567ef89 "
                         "(letters, digits, '.', '_', '-'); list them with `agent-forge inspect --list`")
    return key


class CheckpointStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, cache_dir: str = ".forge/cache"):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.cache_dir = Path(cache_dir)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, s) -> "CheckpointStore":
        return cls(s.url, storage_options(s), s.cache_dir)

    # paths ---------------------------------------------------------------
    def _ckpt(self, key: str) -> str:
        return f"{self.root}/checkpoints/{check_key(key)}"

    def _data(self, m: Manifest) -> str:
        return f"{self._ckpt(m.key)}/{m.data}" if m.data else self._ckpt(m.key)

    def uri(self, key: str) -> str:
        """Where a checkpoint lives, as a user would type it."""
        return self.url + f"/checkpoints/{key}"

    # reading -------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(f"{self._ckpt(key)}/{MANIFEST}")

    def manifest(self, key: str) -> Manifest:
        path = f"{self._ckpt(key)}/{MANIFEST}"
        try:
            text = self.fs.cat_file(path).decode()
        except FileNotFoundError:
            raise CheckpointNotFound(
                f"no checkpoint {key!r} in store {self.url}; list them with `agent-forge inspect --list`"
            ) from None
        try:
            m = Manifest.from_json(text)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointCorrupted(f"checkpoint {key}: its manifest is not a valid manifest ({e}); delete "
                                      f"{self.uri(key)} and rerun the stage that made it") from None
        if m.key != key:
            raise CheckpointCorrupted(f"checkpoint {key}: its manifest names {m.key!r}; delete {self.uri(key)} and "
                                      "rerun the stage that made it")
        return m

    def list(self) -> list[str]:
        """Keys with a manifest (valid or not: `inspect --list` reports the bad ones)."""
        base = f"{self.root}/checkpoints"
        if not self.fs.exists(base):
            return []
        keys = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(k for k in keys if KEY_RE.match(k) and self.exists(k))

    def get(self, key: str) -> Path:
        """A local folder holding the checkpoint's verified files."""
        m = self.manifest(key)
        if self.is_local:
            folder = Path(self._data(m))
            self._verify(m, folder)
            return folder
        folder = self.cache_dir / key
        marker = folder / ".verified"
        if marker.is_file() and marker.read_text() == _manifest_digest(m):
            return folder
        tmp = self.cache_dir / f".{key}-{uuid.uuid4().hex}"
        try:
            for name in m.files:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{self._data(m)}/{name}", str(tmp / name))
            self._verify(m, tmp)
            (tmp / MANIFEST).write_text(m.to_json())
            (tmp / ".verified").write_text(_manifest_digest(m))
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def _verify(self, m: Manifest, folder: Path) -> None:
        for name, meta in m.files.items():
            p = folder / name
            if not p.is_file():
                raise CheckpointCorrupted(
                    f"checkpoint {m.key}: file {name!r} is missing; the checkpoint is damaged: delete "
                    f"{self.uri(m.key)} and rerun the stage that made it"
                )
            digest = sha256_file(p)
            if digest != meta["sha256"]:
                raise CheckpointCorrupted(
                    f"checkpoint {m.key}: file {name!r} has sha256 {digest[:12]}..., the manifest records "
                    f"{meta['sha256'][:12]}...; the file was modified or truncated: delete {self.uri(m.key)} "
                    "and rerun the stage that made it"
                )

    def verify(self, key: str, digests: bool = True) -> list[str]:
        """What is wrong with a stored checkpoint (empty: nothing): a bad manifest, missing files, sizes, and
        with `digests` every file's sha256 (reads every byte: on S3 that is a download)."""
        try:
            m = self.manifest(key)
        except (CheckpointCorrupted, CheckpointNotFound) as e:
            return [str(e)]
        problems = []
        for name, meta in m.files.items():
            path = f"{self._data(m)}/{name}"
            try:
                size = self.fs.info(path)["size"]
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            if size != meta["size"]:
                problems.append(f"{name}: {size} bytes, the manifest records {meta['size']}")
            elif digests:
                with self.fs.open(path, "rb") as f:
                    h = hashlib.sha256()
                    while block := f.read(1 << 22):
                        h.update(block)
                if h.hexdigest() != meta["sha256"]:
                    problems.append(f"{name}: sha256 {h.hexdigest()[:12]}..., the manifest records {meta['sha256'][:12]}...")
        return problems

    # writing -------------------------------------------------------------
    def put(self, key: str, folder: str | os.PathLike, manifest: Manifest, consume: bool = False) -> Manifest:
        """Publish `folder` as checkpoint `key`, atomically against other writers: an existing checkpoint is
        kept as it is (returned, with `info["kept_existing"]` on the returned copy). `consume`: the caller deletes
        `folder` afterwards, so a local store may move its files instead of copying them (a 135M model's weights
        are ~0.5 GB: a copy costs ~1.3 s on a CI machine, a rename nothing)."""
        folder = Path(folder)
        if self.exists(key):
            return _kept(self.manifest(key))
        names = _local_files(folder)
        if not names:
            raise ValueError(f"refusing to write an empty checkpoint {key!r} from {folder}")
        code = [n for n in names if n.endswith(CODE_SUFFIXES)]
        if code:
            raise ValueError(f"refusing to publish executable files {code} in checkpoint {key!r}: a checkpoint "
                             "carries weights and data, never code")
        manifest.key = key
        manifest.files = {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in names}
        manifest.created_at = time.time()
        manifest.data = writer_prefix()
        data = self._data(manifest)
        published = False
        try:
            for n in names:
                self._upload(folder / n, f"{data}/{n}", consume)
            published = self._publish_manifest(key, manifest)
        finally:
            if not published and self.fs.exists(data):
                self.fs.rm(data, recursive=True)
        return manifest if published else _kept(self.manifest(key))

    def _upload(self, local: Path, remote: str, consume: bool = False) -> None:
        if self.is_local:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            if consume:
                try:
                    os.replace(local, remote)
                    return
                except OSError:  # another filesystem (EXDEV): copy
                    pass
            shutil.copyfile(local, remote)
        else:
            self.fs.put_file(str(local), remote)

    def _publish_manifest(self, key: str, manifest: Manifest) -> bool:
        """Create the manifest only if there is none: True if this writer published it."""
        path = f"{self._ckpt(key)}/{MANIFEST}"
        data = manifest.to_json().encode()
        if self.is_local:
            tmp = f"{self._ckpt(key)}/.{MANIFEST}.{uuid.uuid4().hex}"
            Path(tmp).write_bytes(data)
            try:
                os.link(tmp, path)  # atomic, and fails if the manifest exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            self.fs.pipe_file(path, data, mode="create")  # a conditional PUT: If-None-Match: *
            return True
        except Exception:  # noqa: BLE001 - a precondition failure has no portable type: look again
            self.fs.invalidate_cache(path)
            if self.fs.exists(path):
                return False
            raise

    def _write_manifest(self, key: str, manifest: Manifest) -> None:
        """Replace the manifest of an existing checkpoint (metadata only, e.g. recorded metrics)."""
        data = manifest.to_json().encode()
        if self.is_local:
            tmp = f"{self._ckpt(key)}/.{MANIFEST}.{uuid.uuid4().hex}"
            Path(tmp).write_bytes(data)
            os.replace(tmp, f"{self._ckpt(key)}/{MANIFEST}")
        else:
            self.fs.pipe_file(f"{self._ckpt(key)}/{MANIFEST}", data)  # one PUT: atomic on S3

    def update_metrics(self, key: str, metrics: dict[str, float]) -> Manifest:
        """Record extra metrics (e.g. `agent-forge eval`) without touching the checkpoint's files."""
        m = self.manifest(key)
        m.metrics.update(metrics)
        self._write_manifest(key, m)
        return m

    def discard(self, key: str) -> None:
        """Delete a checkpoint: the manifest first (so it stops existing at once), then its files."""
        base = self._ckpt(key)
        if self.fs.exists(f"{base}/{MANIFEST}"):
            self.fs.rm(f"{base}/{MANIFEST}")
        if self.fs.exists(base):
            self.fs.rm(base, recursive=True)

    def clean_stale(self, alive=None) -> list[str]:
        """Remove data prefixes no manifest names whose writer is gone: this host's writers whose process no
        longer runs (`alive(pid)`), and any writer's prefix untouched for a day. Returns what was removed."""
        alive = alive or pid_alive
        host = host_tag()
        base = f"{self.root}/checkpoints"
        if not self.fs.exists(base):
            return []
        removed = []
        for kpath in self.fs.ls(base, detail=False):
            key = kpath.rstrip("/").rsplit("/", 1)[-1]
            if not KEY_RE.match(key):
                continue
            try:
                named = self.manifest(key).data if self.exists(key) else None
            except CheckpointCorrupted:
                continue  # reported by `inspect --verify`; not ours to delete here
            for p in self.fs.ls(kpath, detail=True):
                name = p["name"].rstrip("/").rsplit("/", 1)[-1]
                if p["type"] != "directory" or not name.startswith(DATA_PREFIX) or name == named:
                    continue
                parts = name.split("-")
                gone = len(parts) >= 4 and parts[1] == host and parts[2].isdigit() and not alive(int(parts[2]))
                if gone or time.time() - _newest_mtime(self.fs, p["name"]) > 86400:
                    self.fs.rm(p["name"], recursive=True)
                    removed.append(f"{key}/{name}")
        return removed

    def write_file(self, relpath: str, data: bytes) -> str:
        path = f"{self.root}/{relpath}"
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fs.pipe_file(path, data)
        return f"{self.url}/{relpath}"

    def read_file(self, relpath: str) -> bytes | None:
        """A file written by `write_file`, or None if there is none."""
        try:
            return self.fs.cat_file(f"{self.root}/{relpath}")
        except FileNotFoundError:
            return None

    def delete_file(self, relpath: str) -> None:
        path = f"{self.root}/{relpath}"
        if self.fs.exists(path):
            self.fs.rm(path)

    def lineage(self, key: str) -> list[Manifest]:
        """The checkpoint and its ancestors, oldest first (first parent at each step)."""
        chain, seen = [], set()
        cur: str | None = key
        while cur and cur not in seen:
            seen.add(cur)
            m = self.manifest(cur)
            chain.append(m)
            cur = m.parents[0] if m.parents else None
        return chain[::-1]


def _kept(m: Manifest) -> Manifest:
    m.info = {**m.info, "kept_existing": True}
    return m


def _newest_mtime(fs, path: str) -> float:
    newest = 0.0
    for info in fs.find(path, detail=True).values():
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        if hasattr(mtime, "timestamp"):
            mtime = mtime.timestamp()
        newest = max(newest, float(mtime or 0.0))
    return newest or time.time()


def _manifest_digest(m: Manifest) -> str:
    return hashlib.sha256(m.to_json().encode()).hexdigest()


def s3_client_kwargs(s) -> dict[str, Any]:
    """botocore client options of the configured store (endpoint, region)."""
    client: dict[str, Any] = {}
    if s.endpoint_url:
        client["endpoint_url"] = s.endpoint_url
    if s.region:
        client["region_name"] = s.region
    return client


def storage_options(s) -> dict[str, Any]:
    """fsspec options for the configured store. Credentials come from settings/env, never flow parameters."""
    if not s.url.startswith("s3://"):
        return {}
    opts: dict[str, Any] = {}
    if s.key is not None:
        opts["key"] = s.key.get_secret_value()
    if s.secret is not None:
        opts["secret"] = s.secret.get_secret_value()
    client = s3_client_kwargs(s)
    if client:
        opts["client_kwargs"] = client
    return opts
