"""Where Prefect persists task results and cache records: beside the checkpoints, in the same store;
and where a flow gets its S3 credentials.

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


def apply_credentials_block(settings: ForgeSettings) -> None:
    """S3 credentials from the Prefect Secret block `store.credentials_block` (value {"key", "secret"}),
    put into this process's environment where s3fs reads them. Credentials never travel as flow
    parameters (Prefect masks SecretStr parameters); they come from the worker's environment or this block."""
    name = settings.store.credentials_block
    if not name:
        return
    from prefect.blocks.system import Secret

    from agent_forge_core.errors import ConfigError

    try:
        value = Secret.load(name).get()
    except ValueError as e:
        raise ConfigError(f"store.credentials_block: no Secret block named {name!r} on the Prefect server ({e}); "
                          "create it (README: credentials) or unset store.credentials_block") from None
    if not isinstance(value, dict) or not {"key", "secret"} <= set(value):
        raise ConfigError(f"store.credentials_block: Secret block {name!r} must hold a JSON object with \"key\" and "
                          "\"secret\"")
    os.environ["AWS_ACCESS_KEY_ID"] = value["key"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = value["secret"]


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
