"""Base classes of every settings section (a leaf module: it imports nothing of the project).

A section's settings are of two kinds, kept apart by construction:
- identity: what shapes a stage's output (training steps, merge methods, codecs...). Part of every
  checkpoint key derived from the section.
- runtime: how and where the work runs (executor, slots, timeouts, polling). They live in the section's
  `runtime` sub-section, a `RuntimeSection`, which `identity()` never includes; so changing them never
  changes a key, and a run may resume with other runtime settings.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

PROFILE_NAMES = ("quick", "full")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Values a profile sets on top of the field defaults (which are the `quick` profile), e.g.
    # {"full": {"steps": 600}}; a stage keeps them beside its settings.
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}

    def identity(self) -> dict[str, Any]:
        """The section as plain JSON data without any runtime sub-section (at any depth)."""
        out = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, RuntimeSection):
                continue
            out[field.alias or name] = _plain(value)
        return out

    def departures(self, reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Settings whose value differs from a paper's or reference code's: {name: {ours, reference}}."""
        ours = self.identity()
        return {k: {"ours": ours[k], "reference": v} for k, v in reference.items() if ours.get(k) != v}


class RuntimeSection(Section):
    """Settings of how a stage runs, never of what it produces: never part of a checkpoint key."""


class FanoutRuntime(RuntimeSection):
    """Where the independent jobs of a stage run (EvoMerge candidates; later rollouts, searches).

    local: Prefect tasks in the flow's process (threads without Prefect); deployment: each job is a run
    of a deployment on a work pool (needs a Prefect server and a store every worker can reach)."""

    executor: Literal["local", "deployment"] = Field(
        "local", description="local: jobs are Prefect tasks in the flow's process; deployment: each is a run of "
        "`deployment` on a work pool (needs a Prefect server and a shared store).")
    deployment: str = Field("stage-job/stage-job", description="flow/deployment name used by `executor=deployment`.")
    slots: int | None = Field(
        None, ge=1, description="Jobs in flight at once; default: the GPUs visible (1 on CPU), or the deployment's "
        "work-pool limit.")
    run_timeout_s: float = Field(3600.0, gt=0, description="A deployment run still running this long after it "
                                 "started is cancelled (time queued for a worker does not count).")
    run_retries: int = Field(1, ge=0, description="New runs for a job whose run crashed, failed or timed out (a job "
                             "that merely returns a bad result is never retried).")
    poll_s: float = Field(2.0, gt=0, description="How often the states of deployment runs are polled.")


class StageSection(Section):
    """Settings of a stage. Stages that are not built yet only have `enabled` (and refuse `true`)."""

    # Why the stage is off by default, with the measured reason; the forge report prints it beside the stage.
    off_note: ClassVar[str] = ""

    enabled: bool = False
    gates: dict[str, float] = Field(
        default_factory=dict,
        description="metric -> max allowed regression vs. the stage input (perplexity: relative, accuracies: absolute).",
    )
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)


def known(value: str, allowed, what: str) -> str:
    """Validator body: `value` must be one of `allowed` (read from the registry that owns the names)."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {list(allowed)}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.identity()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
