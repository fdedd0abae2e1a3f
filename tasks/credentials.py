"""Where a flow run on a worker gets its object-store credentials: the worker's environment, or a Prefect
Secret block named by `store.credentials_block` -- never flow parameters (the UI and the API show them).
"""
from __future__ import annotations

import os

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
