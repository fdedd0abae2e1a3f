"""The forge flow: the enabled stages in pipeline order, each a cached Prefect task."""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact  # noqa: E402

from agent_forge_core.config import load_settings  # noqa: E402
from agent_forge_core.context import make_context  # noqa: E402
from agent_forge_core.report import metrics_table, collect, write_report  # noqa: E402
from agent_forge_core.stages.registry import get_stage, plan  # noqa: E402
from agent_forge_core.stages.runner import output_keys  # noqa: E402
from tasks import task_for  # noqa: E402
from tasks.storage import apply_credentials_block, result_storage  # noqa: E402


def _evomerge_artifacts(store, key: str) -> None:
    """The search's table (every candidate) and its plot, as Prefect artifacts."""
    import json

    from agent_forge_core.evomerge.plot import history_rows
    from agent_forge_core.evomerge.search import History

    folder = store.get(key)
    history = History(**json.loads((folder / "evomerge_history.json").read_text()))
    create_table_artifact(history_rows(history), key="evomerge-candidates",
                          description=f"EvoMerge candidates (validation scores) for {key}")
    info = store.manifest(key).info
    create_markdown_artifact(
        f"## EvoMerge {key}\n\nwinner: candidate {info['winner_candidate']} (generation {info['winner_generation']}), "
        f"validation score {info['validation_score']:.4f}, {info['failed_candidates']} failed of {info['candidates']}\n\n"
        f"```yaml\n{(folder / 'merge_recipe.yaml').read_text()}```\n\nplot: {store.uri(key)}/fitness.png",
        key="evomerge-winner", description="EvoMerge winner recipe",
    )


@flow(name="forge", log_prints=True)
def forge(config: str | None = None, profile: str | None = None, overrides: list[str] | None = None) -> dict:
    """Forge a model: import -> cognate -> ... Parameters carry no secrets: store credentials come from
    the worker's environment (AF_STORE__KEY/SECRET or AWS_*) or the Secret block store.credentials_block."""
    log = get_run_logger()
    settings = load_settings(config, overrides or [], profile)
    stages = plan(settings)  # refuses unbuilt or mis-chained stages before any work
    log.info("profile %s, stages %s, store %s", settings.profile, stages, settings.store.url)
    apply_credentials_block(settings)
    ctx = make_context(settings)
    storage = result_storage(settings)
    overall = create_progress_artifact(0.0, key="forge-progress", description="forge: stages done")
    inputs: list[str] = []
    results = []
    for i, name in enumerate(stages):
        expected = output_keys(get_stage(name), inputs, ctx).values()
        # The cache record is only worth trusting while the checkpoints it points to exist.
        refresh = not all(ctx.store.exists(k) for k in expected)
        t = task_for(name).with_options(result_storage=storage, refresh_cache=refresh)
        res = t(name, inputs, settings)
        results.append(res)
        inputs = res["outputs"]
        if name == "evomerge":
            _evomerge_artifacts(ctx.store, inputs[0])
        update_progress_artifact(overall, 100.0 * (i + 1) / len(stages), description=f"forge: {name} done")
    finals = inputs
    rows = metrics_table(collect(ctx.store, finals))
    create_table_artifact(rows, key="forge-metrics", description="metrics of every checkpoint (test split)")
    md, uri = write_report(ctx.store, finals, settings.run_name)
    create_markdown_artifact(md, key="forge-report", description=f"forge report ({uri})")
    log.info("report: %s", uri)
    return {"stages": stages, "finals": finals, "report": uri, "rows": rows,
            "reused": {r["stage"]: r["reused"] for r in results}}
