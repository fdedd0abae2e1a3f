"""Credentials are settings (SecretStr fields, e.g. `store.key`, `store.secret`) that must never become a flow
parameter: Prefect stores parameters in its database and shows them in the UI, and masks SecretStr values
it passes to deployment runs. These helpers find them in `--set` overrides at any nesting, so each entry
point can move them to the environment (`agent-forge run`) or refuse them (`trigger`, the flow, `deploy`).
"""
from __future__ import annotations

from pydantic import BaseModel

from .config import parse_overrides, settings_class
from .errors import ConfigError


def secret_settings() -> list[tuple[str, str]]:
    """(section, field) of every credential setting (a SecretStr field): never a flow parameter."""
    out = []
    for name, f in settings_class().model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [(f.alias or name, sub) for sub, sf in ann.model_fields.items() if "SecretStr" in str(sf.annotation)]
    return out


def secret_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """{"store.secret": value, ...}: the credentials that `--set` overrides carry, at any nesting
    (`store.secret=x`, `store..secret=x`, `store={secret: x}`)."""
    parsed = parse_overrides(overrides)
    found = {}
    for section, field in secret_settings():
        node = parsed.get(section)
        if isinstance(node, dict) and field in node and node[field] not in (None, ""):
            found[f"{section}.{field}"] = str(node[field])
    return found


def without_secrets(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides minus every one that sets a credential (they go to the environment instead)."""
    return [o for o in overrides if not secret_overrides([o])]


SAFE_CREDENTIALS = ("give credentials to the worker's environment (AF_STORE__KEY/AF_STORE__SECRET or "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or a Prefect Secret block named by "
                    "store.credentials_block")


def refuse_secret_overrides(overrides: list[str] | tuple[str, ...], where: str) -> None:
    found = secret_overrides(overrides)
    if found:
        raise ConfigError(f"{', '.join(sorted(found))}: a credential must not be {where} (parameters are stored in "
                          f"Prefect's database and shown in the UI); {SAFE_CREDENTIALS}")
