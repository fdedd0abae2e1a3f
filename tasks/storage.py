"""Where Prefect persists task results and cache records: beside the checkpoints, in the same store.

Local stores pass a Path (no block needed). For S3, Prefect needs a saved block: we save a
RemoteFileSystem block holding only the bucket path and endpoint -- never credentials. s3fs reads the
credentials from the process environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), which we fill
from AF_STORE__KEY / AF_STORE__SECRET when those are the ones given.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent_forge_core.config import ForgeSettings


def export_credentials(settings: ForgeSettings) -> None:
    s = settings.store
    if s.key is not None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", s.key.get_secret_value())
    if s.secret is not None:
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", s.secret.get_secret_value())


def result_storage(settings: ForgeSettings):
    url = settings.store.url.rstrip("/") + "/prefect-results"
    if not url.startswith("s3://"):
        Path(url).mkdir(parents=True, exist_ok=True)
        return Path(url).resolve()
    from prefect.filesystems import RemoteFileSystem

    export_credentials(settings)
    client = {}
    if settings.store.endpoint_url:
        client["endpoint_url"] = settings.store.endpoint_url
    if settings.store.region:
        client["region_name"] = settings.store.region
    block = RemoteFileSystem(basepath=url, settings={"client_kwargs": client} if client else {})
    name = "agent-forge-results-" + hashlib.sha256(f"{url}|{client}".encode()).hexdigest()[:12]
    block.save(name, overwrite=True)
    return block
