"""The stage registry and the pipeline plan.

Only built stages are registered. A config that enables a stage that is not registered is refused
before any work, with a message that says how to turn it off.
"""
from __future__ import annotations

from ..config import PIPELINE_ORDER, ForgeSettings
from ..errors import ConfigError
from .contract import StageSpec

STAGES: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    STAGES[spec.name] = spec
    return spec


def _load_builtin() -> None:
    from . import bitnet, cognate, compression, evomerge, importer  # noqa: F401  (registration on import)


def get_stage(name: str) -> StageSpec:
    _load_builtin()
    if name not in STAGES:
        raise ConfigError(f"stage {name!r} is not built in this version; built stages: {available()}")
    return STAGES[name]


def available() -> list[str]:
    _load_builtin()
    return [n for n in ("import", *PIPELINE_ORDER) if n in STAGES]


def plan(settings: ForgeSettings) -> list[str]:
    """Stages to run, in pipeline order, starting with `import` (the base model)."""
    _load_builtin()
    names = ["import"]
    for name in PIPELINE_ORDER:
        if not settings.section(name).enabled:
            continue
        if name not in STAGES:
            raise ConfigError(
                f"{name}.enabled is true, but the {name!r} stage is not built in this version of Agent Forge "
                f"(built: {available()}); set {name}.enabled=false"
            )
        names.append(name)
    produced_many = False
    for prev, name in zip(names, names[1:]):
        spec = STAGES[name]
        if spec.takes == "one" and produced_many:
            raise ConfigError(
                f"stage {name!r} takes one model but {prev!r} produces several; enable a merging stage "
                f"(evomerge) between them or give {prev!r} a single output"
            )
        if spec.takes == "many" and not produced_many:
            raise ConfigError(
                f"stage {name!r} merges several models but {prev!r} produces one; enable cognate (with 2+ focuses) "
                f"before it or set {name}.enabled=false"
            )
        produced_many = len(spec.variants(settings.section(name))) > 1
    return names
