"""Registering Agent Forge with a Prefect server: work pools, deployments, schedules; triggering runs.

The declarative source is `deployments/prefect.yaml` (deployments: entrypoint, work pool, default
parameters, pull step, schedule) and `deployments/work-pools.yaml` (pools). `register()` reads both
and creates or updates everything through the Prefect API -- what `prefect deploy --all` does for a
process pool, without prompts or a git remote -- filling the schedule (cron, time zone, on/off) and the
pool concurrency limits from the `deploy` config section. Rerunning it updates in place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent_forge_core.config import DeploySettings
from agent_forge_core.errors import ConfigError

# The checkout (or an image's copy) holding deployments/ and the flow files; an installed (non-editable)
# package lives in site-packages, so images set AF_REPO_DIR.
REPO_DIR = Path(os.environ.get("AF_REPO_DIR") or Path(__file__).resolve().parents[1])
DEPLOYMENTS_DIR = REPO_DIR / "deployments"


def read_spec(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOYMENTS_DIR / name).read_text())


def api_url() -> str:
    """The server to deploy to; refuses Prefect's ephemeral mode (a deployment there would vanish)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ConfigError("PREFECT_API_URL is not set, so there is no server to deploy to: start one "
                          "(`prefect server start`) and `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return url


def ui_url(flow_run_id) -> str:
    from prefect.settings import get_current_settings

    s = get_current_settings()
    base = s.ui_url or api_url().removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def pool_limits(cfg: DeploySettings) -> dict[str, int]:
    return {"gpu_concurrency": cfg.gpu_concurrency or max(1, gpu_count()), "cpu_concurrency": cfg.cpu_concurrency}


def ensure_pools(client, cfg: DeploySettings) -> dict[str, int]:
    """Create the work pools of work-pools.yaml, or update their limits; returns name -> limit."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    limits = pool_limits(cfg)
    out = {}
    for pool in read_spec("work-pools.yaml")["pools"]:
        if pool["type"] != "process":
            raise ConfigError(f"work pool {pool['name']}: `agent-forge deploy` creates process pools; create "
                              f"{pool['type']} pools with `prefect work-pool create` (README: run it like production)")
        limit = limits[pool["limit"]]
        try:
            client.read_work_pool(pool["name"])
            client.update_work_pool(pool["name"], WorkPoolUpdate(concurrency_limit=limit, description=pool["description"]))
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool["name"], type="process", description=pool["description"], concurrency_limit=limit,
                base_job_template=ProcessWorker.get_default_base_job_template()))
        out[pool["name"]] = limit
    return out


@dataclass
class Registered:
    name: str  # flow/deployment
    id: Any
    pool: str
    schedules: list[str]
    parameters: dict[str, Any]


def _schedules(entries: list[dict[str, Any]], cfg: DeploySettings, active: dict[str, bool]):
    """The YAML's schedule entries with cron/timezone from the `deploy` section; `active` (by slug) is what the
    server has now, kept unless `deploy.nightly` was given."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    return [DeploymentScheduleCreate(schedule=CronSchedule(cron=cfg.cron, timezone=cfg.timezone),
                                     active=active.get(e.get("slug"), cfg.nightly), slug=e.get("slug"))
            for e in entries]


def _current_activity(client, name: str) -> dict[str, bool]:
    """{schedule slug: active} of a registered deployment ({} if it is new)."""
    from prefect.exceptions import ObjectNotFound

    try:
        dep = client.read_deployment_by_name(name)
    except ObjectNotFound:
        return {}
    return {s.slug: s.active for s in (dep.schedules or []) if s.slug}


def forge_parameters(config: dict[str, Any], profile: str | None, overrides: list[str], settings,
                     allow_local_store: bool = False) -> dict[str, Any]:
    """The forge deployment's default parameters (what the nightly schedule and a plain UI run use): the given
    config file and `--set` overrides as one list of overrides (a file on this machine is not on the
    workers), never the `deploy` section (that is about registering) and never credentials."""
    from agent_forge_core.config import to_overrides
    from agent_forge_core.credentials import refuse_secret_overrides

    merged = [o for o in [*to_overrides(config), *overrides] if not o.strip().startswith("deploy.")]
    refuse_secret_overrides(merged, "a deployment's default parameter")
    url = settings.store.url
    if "://" not in url and not Path(url).expanduser().is_absolute() and not allow_local_store:
        raise ConfigError(f"store.url={url} is relative to each worker's working directory, and workers may run "
                          "elsewhere: give the deployment a shared store (--set store.url=s3://bucket/prefix) or an "
                          "absolute path every worker sees, or pass --allow-local-store")
    return {"config": None, "profile": profile, "overrides": merged}


def register(client, cfg: DeploySettings, parameters: dict[str, dict[str, Any]] | None = None,
             keep_schedule_state: bool = True) -> list[Registered]:
    """Create or update every deployment of prefect.yaml (`parameters`: default parameters by deployment name,
    instead of the YAML's); its flow code is imported from the repository. A schedule switched on or off
    in the UI stays so unless `keep_schedule_state` is False (`deploy.nightly` was given)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    spec = read_spec("prefect.yaml")
    out = []
    for d in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO_DIR / d["entrypoint"]), use_placeholder_flow=False)
        flow_id = client.create_flow_from_name(flow.name)
        active = _current_activity(client, f"{flow.name}/{d['name']}") if keep_schedule_state else {}
        schedules = _schedules(d.get("schedules") or [], cfg, active)
        dep_id = client.create_deployment(
            flow_id=flow_id, name=d["name"], entrypoint=d["entrypoint"], description=d.get("description"),
            work_pool_name=d["work_pool"]["name"], job_variables=d["work_pool"].get("job_variables") or {},
            parameters=(parameters or {}).get(d["name"], d.get("parameters") or {}), tags=d.get("tags") or [],
            parameter_openapi_schema=guard_parameters(parameter_schema(flow.fn).model_dump_for_openapi()),
            enforce_parameter_schema=True, pull_steps=spec["pull"], schedules=schedules,
        )
        out.append(Registered(f"{flow.name}/{d['name']}", dep_id, d["work_pool"]["name"],
                              [f"{cfg.cron} ({cfg.timezone}) {'active' if s.active else 'inactive'}" for s in schedules],
                              (parameters or {}).get(d["name"], d.get("parameters") or {})))
    return out


PARAMETER_HELP = {
    "config": ("Path of a YAML config file on the worker (sections as in `agent-forge config show`); empty: the "
               "embedded defaults.", ["/etc/agent-forge/nightly.yaml"]),
    "profile": ("quick (CPU budgets) or full (GPU budgets); empty: quick, or the config file's profile.", ["full"]),
    "overrides": ("Settings as section.key=value, applied last. Never credentials: give them to the worker's "
                  "environment or a Secret block (store.credentials_block).",
                  [["cognate.steps=60", "store.url=s3://bucket/prefix"]]),
}


def guard_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameter schema with help for the UI form and a server-side refusal of credentials: with
    `enforce_parameter_schema` the server rejects a run whose `overrides` set a credential before it stores
    its parameters (UI, REST, `run_deployment` and schedules alike)."""
    from agent_forge_core.credentials import secret_settings

    props = schema.get("properties", {})
    for name, (description, examples) in PARAMETER_HELP.items():
        if name in props:
            props[name].update(description=description, examples=examples)
    if "overrides" in props:
        secrets: dict[str, set[str]] = {}
        for section, field in secret_settings():
            secrets.setdefault(section, set()).add(field)
        pattern = "|".join(
            rf"^\s*{section}\s*(\.+\s*({'|'.join(sorted(fields))})\s*)?=" for section, fields in sorted(secrets.items()))
        for option in props["overrides"].get("anyOf", [props["overrides"]]):
            if option.get("type") == "array":
                option["items"] = {"type": "string", "not": {"pattern": pattern},
                                   "description": "section.key=value; credentials are refused"}
    return schema


def worker_command(pool: str, gpu: int | None, limit: int | None, poll_s: float = 2.0) -> tuple[list[str], dict[str, str]]:
    """The `prefect worker` command line and environment for a process worker of `pool`. It asks the server
    for runs every `poll_s` seconds (Prefect's default, 10 s, makes a run wait up to that long to start);
    PREFECT_WORKER_QUERY_SECONDS in the environment wins."""
    import sys

    prefect_bin = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect_bin) if prefect_bin.exists() else "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    env = dict(os.environ)
    env.setdefault("AF_REPO_DIR", str(REPO_DIR))  # the deployments' pull step runs flows from here
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", f"{poll_s:g}")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)  # this worker's runs see only its GPU, as cuda:0
        limit = limit or 1
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd, env
