"""Content-derived checkpoint keys: the same inputs, stage, config and code always give the same key.

key = <stage>[-<variant>]-sha256(parents | stage | variant | config_hash | code_version)[:16]
"""
from __future__ import annotations

import hashlib


def checkpoint_key(stage: str, parents: list[str], config_hash: str, code_version: str, variant: str = "") -> str:
    blob = "\n".join([",".join(parents), stage, variant, config_hash, code_version])
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return f"{stage}-{variant}-{digest}" if variant else f"{stage}-{digest}"
