"""The forge flow: the enabled stages in pipeline order, each a cached Prefect task."""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact  # noqa: E402

from agent_forge_core.config import load_settings  # noqa: E402
from agent_forge_core.context import make_context  # noqa: E402
from agent_forge_core.credentials import refuse_secret_overrides  # noqa: E402
from agent_forge_core.final_agent import measure_final_agent  # noqa: E402
from agent_forge_core.report import metrics_table, collect, write_report  # noqa: E402
from agent_forge_core.stages.contract import Artifact  # noqa: E402
from agent_forge_core.stages.plan import make_plan, stage_statuses  # noqa: E402
from agent_forge_core.stages.registry import get_stage  # noqa: E402
from agent_forge_core.store import CheckpointStore  # noqa: E402
from tasks import task_for  # noqa: E402
from prefect.states import State  # noqa: E402

from tasks.credentials import apply_credentials_block  # noqa: E402


def publish(artifact: Artifact) -> None:
    if artifact.kind == "table":
        create_table_artifact(artifact.data, key=artifact.key, description=artifact.description)
    else:
        create_markdown_artifact(artifact.data, key=artifact.key, description=artifact.description)


@flow(name="forge", log_prints=True)
def forge(config: str | None = None, profile: str | None = None, overrides: list[str] | None = None) -> dict:
    """Forge a model: import -> cognate -> ... Parameters carry no secrets: store credentials come from
    the worker's environment (AF_STORE__KEY/SECRET or AWS_*) or the Secret block store.credentials_block."""
    log = get_run_logger()
    refuse_secret_overrides(overrides or [], "a flow parameter")  # UI, REST, schedule and API runs reach here
    settings = load_settings(config, overrides or [], profile)
    plan = make_plan(settings)  # refuses unbuilt or mis-chained stages before any work; every key, once
    log.info("profile %s, stages %s, store %s", settings.profile, plan.names, settings.store.url)
    apply_credentials_block(settings)
    store = CheckpointStore.from_settings(settings.store)
    for stale in store.clean_stale():
        log.info("removed %s, left by a writer that is gone", stale)
    overall = create_progress_artifact(0.0, key="forge-progress", description="forge: stages done")
    results = []
    for i, planned in enumerate(plan.stages):
        res = task_for(planned.name)(dataclasses.asdict(planned), settings)
        results.append(res.result() if isinstance(res, State) else res)  # a Cached state carries its data
        spec = get_stage(planned.name)
        if spec.artifacts:
            for key in planned.outputs:
                for artifact in spec.artifacts(store, key):
                    publish(artifact)
        update_progress_artifact(overall, 100.0 * (i + 1) / len(plan.stages), description=f"forge: {planned.name} done")
    finals = plan.finals
    rows = metrics_table(collect(store, finals))
    create_table_artifact(rows, key="forge-metrics", description="metrics of every checkpoint (test split)")
    reused = {r["stage"]: r["reused"] for r in results}
    statuses = stage_statuses(settings, plan, reused)
    for st in statuses:
        if st.status == "off":
            log.info("stage %s off: %s", st.stage, st.reason)
    agent_rows = []
    if len(finals) == 1:
        log.info("final agent: measuring what the stages gave it on %s", finals[0])
        ctx = make_context(settings, log=log)
        agent_rows = measure_final_agent(store, finals[0], settings, ctx.work_dir, log, str(ctx.device))
    md, uri = write_report(store, finals, settings.run_name, statuses, agent_rows)
    create_markdown_artifact(md, key="forge-report", description=f"forge report ({uri})")
    log.info("report: %s", uri)
    return {"stages": plan.names, "finals": finals, "report": uri, "rows": rows, "reused": reused,
            "statuses": {st.stage: st.status for st in statuses}, "agent": agent_rows}
