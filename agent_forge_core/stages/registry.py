"""The stage registry: the pipeline, in order (the registry imports its stages, never the reverse).

A name alone is a stage that is not built yet: its config section only knows `enabled`, and a config
that enables it is refused before any work with a message that says how to turn it off. Adding a stage
is one package (`<package>/settings.py`, `<package>/stage.py` with its `SPEC`) and one line here: the
stage's SPEC in its place in `PIPELINE`. Plug-ins outside this package (and tests) add theirs with
`registered(spec, after=...)`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..baking.stage import SPEC as baking
from ..bitnet.stage import SPEC as bitnet
from ..cognate.stage import SPEC as cognate
from ..compression.stage import SPEC as compression
from ..errors import ConfigError
from ..evomerge.stage import SPEC as evomerge
from ..experts.stage import SPEC as experts
from ..fanout import Job
from ..importer.stage import SPEC as importer
from ..loop.stage import SPEC as loop
from ..quietstar.stage import SPEC as quietstar
from .contract import StageSpec

PIPELINE: tuple[StageSpec | str, ...] = (
    importer,
    cognate,
    evomerge,
    quietstar,
    bitnet,
    loop,
    baking,
    experts,
    compression,
)

_pipeline: list[StageSpec | str] = list(PIPELINE)


def pipeline() -> tuple[StageSpec | str, ...]:
    return tuple(_pipeline)


def _name(entry: StageSpec | str) -> str:
    return entry if isinstance(entry, str) else entry.name


@contextmanager
def registered(spec: StageSpec, after: str) -> Iterator[StageSpec]:
    """The pipeline with `spec` inserted after stage `after` (or replacing an unbuilt stage of its name),
    for the duration of the block."""
    names = [_name(e) for e in _pipeline]
    saved = list(_pipeline)
    if spec.name in names:
        if not isinstance(_pipeline[names.index(spec.name)], str):
            raise ConfigError(f"stage {spec.name!r} is already registered")
        _pipeline[names.index(spec.name)] = spec
    else:
        _pipeline.insert(names.index(after) + 1, spec)
    try:
        yield spec
    finally:
        _pipeline[:] = saved


def stage_names() -> list[str]:
    """Every stage of the pipeline, built or not, in order."""
    return [_name(e) for e in _pipeline]


def available() -> list[str]:
    return [e.name for e in _pipeline if not isinstance(e, str)]


def get_stage(name: str) -> StageSpec:
    for e in _pipeline:
        if not isinstance(e, str) and e.name == name:
            return e
    raise ConfigError(f"stage {name!r} is not built in this version; built stages: {available()}")


def get_job(name: str) -> Job:
    """A fan-out job by name (what a deployment run is told to run)."""
    for e in _pipeline:
        if not isinstance(e, str):
            for job in e.jobs:
                if job.name == name:
                    return job
    raise ConfigError(f"no stage has a job named {name!r}; jobs: "
                      f"{[j.name for e in _pipeline if not isinstance(e, str) for j in e.jobs]}")
