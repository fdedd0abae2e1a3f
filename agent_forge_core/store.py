"""Checkpoint store over fsspec: a local directory by default, `s3://bucket/prefix` through s3fs.

Layout under the root:
    checkpoints/<key>/<model files...>
    checkpoints/<key>/manifest.json     <- written last; a checkpoint exists iff its manifest does
    staging/<key>-<uuid>/...            <- uploads in progress
    reports/<key>/...                   <- forge reports

A write uploads every file under a staging prefix, moves them into place, then writes the manifest (an
atomic rename locally, a single PUT on S3). A reader that finds no manifest sees no checkpoint, so an
interrupted write leaves nothing that counts; the next write of the same key overwrites the leftovers.
Every file's sha256 is recorded and verified on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from .errors import CheckpointCorrupted, CheckpointNotFound

MANIFEST = "manifest.json"


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
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid checkpoint key {key!r}")
        return f"{self.root}/checkpoints/{key}"

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
        return Manifest.from_json(text)

    def list(self) -> list[str]:
        base = f"{self.root}/checkpoints"
        if not self.fs.exists(base):
            return []
        keys = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(k for k in keys if self.exists(k))

    def get(self, key: str) -> Path:
        """A local folder holding the checkpoint's verified files."""
        m = self.manifest(key)
        if self.is_local:
            folder = Path(self._ckpt(key))
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
                self.fs.get_file(f"{self._ckpt(key)}/{name}", str(tmp / name))
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

    # writing -------------------------------------------------------------
    def put(self, key: str, folder: str | os.PathLike, manifest: Manifest) -> Manifest:
        """Atomically publish `folder` as checkpoint `key`. A key that already exists is kept as is."""
        folder = Path(folder)
        if self.exists(key):
            return self.manifest(key)
        names = _local_files(folder)
        if not names:
            raise ValueError(f"refusing to write an empty checkpoint {key!r} from {folder}")
        manifest.key = key
        manifest.files = {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in names}
        manifest.created_at = time.time()
        staging = f"{self.root}/staging/{key}-{uuid.uuid4().hex}"
        final = self._ckpt(key)
        try:
            for n in names:
                self._upload(folder / n, f"{staging}/{n}")
            for n in names:
                self._move(f"{staging}/{n}", f"{final}/{n}")
            self._write_manifest(final, manifest)
        finally:
            if self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)
        return manifest

    def _upload(self, local: Path, remote: str) -> None:
        if self.is_local:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, remote)
        else:
            self.fs.put_file(str(local), remote)

    def _move(self, src: str, dst: str) -> None:
        if self.is_local:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)

    def _write_manifest(self, final: str, manifest: Manifest) -> None:
        data = manifest.to_json().encode()
        if self.is_local:
            tmp = f"{final}/.{MANIFEST}.{uuid.uuid4().hex}"
            Path(tmp).write_bytes(data)
            os.replace(tmp, f"{final}/{MANIFEST}")
        else:
            self.fs.pipe_file(f"{final}/{MANIFEST}", data)  # one PUT: atomic on S3

    def update_metrics(self, key: str, metrics: dict[str, float]) -> Manifest:
        """Record extra metrics (e.g. `agent-forge eval`) without touching the checkpoint's files."""
        m = self.manifest(key)
        m.metrics.update(metrics)
        self._write_manifest(self._ckpt(key), m)
        return m

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


def _manifest_digest(m: Manifest) -> str:
    return hashlib.sha256(m.to_json().encode()).hexdigest()


def storage_options(s) -> dict[str, Any]:
    """fsspec options for the configured store. Credentials come from settings/env, never flow parameters."""
    if not s.url.startswith("s3://"):
        return {}
    opts: dict[str, Any] = {}
    if s.key is not None:
        opts["key"] = s.key.get_secret_value()
    if s.secret is not None:
        opts["secret"] = s.secret.get_secret_value()
    client: dict[str, Any] = {}
    if s.endpoint_url:
        client["endpoint_url"] = s.endpoint_url
    if s.region:
        client["region_name"] = s.region
    if client:
        opts["client_kwargs"] = client
    return opts
