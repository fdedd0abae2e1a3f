"""The plan of a run: the enabled stages in pipeline order, each with its inputs and output keys.

Keys are content-derived (`keys.checkpoint_key`) from the stage, its parents' keys, the config that shapes
the output and the code version, so the whole chain's keys are known before any work: computed once per
run, here, and passed down to the tasks and the runner.

    config_hash = sha256(canonical JSON of {stage: section identity, eval: eval settings, model: model settings,
                                            eval_version: the task generators' version})
    code_version = <package version>+<stage>.v<StageSpec.version>

The identity of a section leaves out its `runtime` part, so where and how a stage runs never changes a
key (`settings_base.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import __version__
from ..errors import ConfigError
from ..report import StageStatus
from ..evals.tasks import EVAL_VERSION
from ..keys import checkpoint_key, config_hash
from .contract import StageSpec
from .registry import available, get_stage, pipeline, stage_names


def stage_config_hash(spec: StageSpec, settings) -> str:
    """Hash of everything in the config that shapes the stage's output or its manifest's metrics."""
    return config_hash({"stage": settings.section(spec.name), "eval": settings.eval, "model": settings.model,
                        "eval_version": EVAL_VERSION})


def code_version(spec: StageSpec) -> str:
    return f"{__version__}+{spec.name}.v{spec.version}"


def output_keys(spec: StageSpec, inputs: list[str], settings) -> dict[str, str]:
    """{variant: checkpoint key} of every output of the stage on these inputs."""
    ch, cv = stage_config_hash(spec, settings), code_version(spec)
    return {v: checkpoint_key(spec.name, inputs, ch, cv, v) for v in spec.variants(settings.section(spec.name))}


@dataclass(frozen=True)
class PlannedStage:
    name: str
    inputs: list[str]
    keys: dict[str, str]  # variant -> output key

    @property
    def outputs(self) -> list[str]:
        return list(self.keys.values())


@dataclass(frozen=True)
class ForgePlan:
    stages: list[PlannedStage] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def finals(self) -> list[str]:
        return self.stages[-1].outputs if self.stages else []


def plan(settings) -> list[str]:
    """Stages to run, in pipeline order, starting with `import` (the base model)."""
    names = []
    for entry in pipeline():
        name = entry if isinstance(entry, str) else entry.name
        if not settings.section(name).enabled:
            continue
        if isinstance(entry, str):
            raise ConfigError(
                f"{name}.enabled is true, but the {name!r} stage is not built in this version of Agent Forge "
                f"(built: {[e.name for e in pipeline() if not isinstance(e, str)]}); set {name}.enabled=false"
            )
        names.append(name)
    if not names or get_stage(names[0]).takes != "none":
        raise ConfigError("the first enabled stage must make a model from the config (import); set import.enabled=true")
    produced_many = False
    for prev, name in zip(names, names[1:]):
        spec = get_stage(name)
        if spec.takes == "none":
            raise ConfigError(f"stage {name!r} starts a lineage and cannot follow {prev!r}")
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


def make_plan(settings) -> ForgePlan:
    """The checked plan with every stage's inputs and output keys."""
    stages, inputs = [], []
    for name in plan(settings):
        keys = output_keys(get_stage(name), inputs, settings)
        stages.append(PlannedStage(name, inputs, keys))
        inputs = list(keys.values())
    return ForgePlan(stages)


def off_reason(settings, name: str) -> str:
    """Why a stage is not in the run: not built yet, or off in the settings (with the stage's own measured note,
    its settings' `off_note`)."""
    if name not in available():
        return "not built in this version of Agent Forge"
    note = type(settings.section(name)).off_note
    return (f"`{name}.enabled=false` (profile {settings.profile}); `--set {name}.enabled=true` runs it"
            + (f". {note}" if note else ""))


def stage_statuses(settings, forge_plan: ForgePlan, reused: dict[str, bool]) -> list[StageStatus]:
    """Every pipeline stage in order: run or cached (`reused[stage]`: every output was already stored), or off."""
    planned = {s.name: s for s in forge_plan.stages}
    return [StageStatus(n, "cached" if reused[n] else "run", tuple(planned[n].outputs)) if n in planned
            else StageStatus(n, "off", reason=off_reason(settings, n)) for n in stage_names()]
