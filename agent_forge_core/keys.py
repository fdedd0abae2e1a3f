"""Content-derived checkpoint keys: the same inputs, stage, config and code always give the same key.

key = <stage>[-<variant>]-sha256(parents | stage | variant | config_hash | code_version)[:16]

config_hash is the sha256 of canonical JSON (sorted keys, no spaces) of what shapes the output: the
stage's section, the eval settings and the model settings, each by its identity (never its runtime part).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def config_hash(data: Any) -> str:
    """Stable sha256 of JSON-able data (sorted keys); a settings section counts by its identity."""
    data = data.identity() if hasattr(data, "identity") else data
    if isinstance(data, dict):
        data = {k: v.identity() if hasattr(v, "identity") else v for k, v in data.items()}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpoint_key(stage: str, parents: list[str], config_hash: str, code_version: str, variant: str = "") -> str:
    blob = "\n".join([",".join(parents), stage, variant, config_hash, code_version])
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return f"{stage}-{variant}-{digest}" if variant else f"{stage}-{digest}"
