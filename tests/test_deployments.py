"""Production use, end to end on 127.0.0.1: `prefect server start`, moto's S3 server, process work pools,
`agent-forge deploy / worker / trigger`, a REST-triggered run, the nightly schedule, the UI, and EvoMerge
candidates fanned out as deployment runs on a `gpu` pool of concurrency 2 with one run killed."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES
from prefect_stack import PrefectStack, api, http

pytestmark = pytest.mark.slow
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = PrefectStack(tmp_path_factory.mktemp("prefect-server"))
    try:
        s.startup_s = s.start_server()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def forge_overrides(moto_s3, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("worker-disk")
    return [f"model.source={tiny_model_dir}", "store.url=s3://forge/prod", f"store.endpoint_url={moto_s3}",
            f"work_dir={work}/work", f"store.cache_dir={work}/cache", *TINY_OVERRIDES]


DEPLOY_STORE = ["store.url=s3://forge/nightly"]


@pytest.fixture(scope="module")
def deployed(stack, moto_s3):
    # a relative local store is refused: workers may run elsewhere
    r = stack.cli("deploy")
    assert r.returncode == 2 and "store.url=.forge/store is relative" in r.stderr
    args = ["deploy", "--set", "deploy.nightly=true", "--set", "deploy.cron=30 3 * * *",
            "--set", "deploy.timezone=Europe/Berlin", "--set", "deploy.gpu_concurrency=2",
            "--set", DEPLOY_STORE[0], "--set", f"store.endpoint_url={moto_s3}", "--set", "cognate.steps=3"]
    for _ in range(2):  # registering twice updates in place
        r = stack.cli(*args)
        assert r.returncode == 0, r.stderr
    assert "work pool gpu        process, concurrency limit 2" in r.stdout
    assert '"cognate.steps=3"' in r.stdout  # the default parameters are shown
    return {d["name"]: d for d in api("POST", f"{stack.api_url}/deployments/filter", {})}


def _s3_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket="forge", Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def test_deploy_trigger_rest_schedule_ui_and_s3(stack, deployed, forge_overrides, moto_s3):
    # pools and deployments as declared, schedule from the deploy settings, registered once
    pools = {p["name"]: p for p in api("POST", f"{stack.api_url}/work_pools/filter", {})}
    assert pools["cpu"]["type"] == "process" and pools["gpu"]["concurrency_limit"] == 2
    forge = deployed["forge"]
    assert forge["work_pool_name"] == "cpu" and deployed["stage-job"]["work_pool_name"] == "gpu"
    assert len(forge["schedules"]) == 1
    sched = forge["schedules"][0]
    assert sched["schedule"]["cron"] == "30 3 * * *" and sched["schedule"]["timezone"] == "Europe/Berlin"
    assert sched["active"] is True
    assert forge["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $AF_REPO_DIR }}"
    # the config given to `deploy` is what the nightly schedule runs with; the deploy section is not part of it
    assert forge["parameters"] == {"config": None, "profile": None, "overrides": [
        DEPLOY_STORE[0], f"store.endpoint_url={moto_s3}", "cognate.steps=3"]}
    assert forge["parameter_openapi_schema"]["properties"]["overrides"]["description"]

    # a schedule switched off in the UI stays off when someone redeploys without deploy.nightly
    # (each redeploy keeps the gpu pool's limit of 2 that the next test's two candidates at once need)
    keep = ["--set", DEPLOY_STORE[0], "--set", "deploy.gpu_concurrency=2"]
    api("PATCH", f"{stack.api_url}/deployments/{forge['id']}/schedules/{sched['id']}", {"active": False})
    assert stack.cli("deploy", *keep).returncode == 0
    assert api("GET", f"{stack.api_url}/deployments/{forge['id']}")["schedules"][0]["active"] is False
    assert stack.cli("deploy", *keep, "--set", "deploy.nightly=true").returncode == 0
    assert api("GET", f"{stack.api_url}/deployments/{forge['id']}")["schedules"][0]["active"] is True

    # credentials in a run's parameters are refused by the server before it stores anything (UI, REST, API)
    import urllib.error

    secret = "UIs3cr3tVALUE42"
    for bad in (f"store.secret={secret}", f"store..secret={secret}", f"store={{secret: {secret}}}"):
        with pytest.raises(urllib.error.HTTPError) as e:
            http("POST", f"{stack.api_url}/deployments/{forge['id']}/create_flow_run",
                 {"parameters": {"overrides": ["cognate.steps=3", bad]}}, retries=1)
        assert e.value.code in (409, 422), e.value.code
    db = [p for p in Path(stack.home).rglob("prefect.db*") if p.is_file()]
    assert db and all(secret.encode() not in p.read_bytes() for p in db)

    # the UI is served by the same server
    status, body = http("GET", f"{stack.url}/")
    assert status == 200 and b"<!DOCTYPE html>" in body[:200]

    stack.start_worker("cpu", **S3_ENV)

    # 1) programmatic: `agent-forge trigger` = run_deployment through the API
    sets = [a for o in forge_overrides for a in ("--set", o)]
    t0 = time.monotonic()
    r = stack.cli("trigger", "--wait", "--timeout", "420", *sets, timeout=480)
    e2e_cli = time.monotonic() - t0
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{stack.log('worker-cpu')}"
    assert "Completed" in r.stdout and f"{stack.url}/runs/flow-run/" in r.stdout
    run_id = r.stdout.split()[2]
    run = api("GET", f"{stack.api_url}/flow_runs/{run_id}")
    assert run["state_type"] == "COMPLETED" and run["deployment_id"] == forge["id"]
    assert run["parameters"]["overrides"] == forge_overrides

    # 2) REST: POST /api/deployments/{id}/create_flow_run (503 retried by `http`)
    rest = api("POST", f"{stack.api_url}/deployments/{forge['id']}/create_flow_run",
               {"parameters": {"overrides": forge_overrides}})
    final = stack.wait_final(rest["id"], timeout=300)
    assert final["state_type"] == "COMPLETED", stack.log("worker-cpu")
    # the second run found the first one's checkpoints in S3: every stage came back from the cache
    tasks = api("POST", f"{stack.api_url}/task_runs/filter", {"flow_runs": {"id": {"any_": [rest["id"]]}}})
    stage_states = {t["name"]: t["state_name"] for t in tasks if t["name"] in ("import", "cognate")}
    assert stage_states == {"import": "Cached", "cognate": "Cached"}

    # checkpoints, manifests and reports are in the bucket; no Prefect result record (never trusted)
    keys = _s3_keys(moto_s3, "prod/")
    manifests = [k for k in keys if k.endswith("/manifest.json")]
    assert sum("/import-" in k for k in manifests) == 1 and sum("/cognate-" in k for k in manifests) == 3
    assert any(k.endswith(".safetensors") and "/cognate-" in k for k in keys)
    assert any(k.startswith("prod/reports/") and k.endswith("report.md") for k in keys)
    assert not any(k.startswith("prod/prefect-results/") for k in keys)

    starts = [(_ts(x["start_time"]) - _ts(x["created"])) for x in (run, final)]
    Path(stack.home, "timings.json").write_text(json.dumps(
        {"server_start_s": stack.startup_s, "trigger_to_start_s": starts, "cli_trigger_wait_s": e2e_cli}))
    print(f"server start {stack.startup_s:.1f}s; trigger->start {starts[0]:.1f}s / {starts[1]:.1f}s; "
          f"CLI trigger --wait {e2e_cli:.1f}s")


def test_distributed_evomerge_on_a_gpu_pool_with_a_killed_run(stack, deployed, forge_overrides, moto_s3, tmp_path):
    # the worker's job processes meet at a rendezvous (tests/rendezvous/sitecustomize.py): the first two hold
    # inside their job until released, so two candidates are mid-evaluation at once on any machine
    meet = tmp_path / "rendezvous"
    meet.mkdir()
    assert api("GET", f"{stack.api_url}/work_pools/gpu")["concurrency_limit"] == 2  # else the first two never meet
    stack.start_worker("gpu", AF_TEST_RENDEZVOUS=str(meet), **S3_ENV,
                       PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent / "rendezvous"),
                                                                os.environ.get("PYTHONPATH")])))
    killed: list[dict] = []
    both_running: list[list[str]] = []
    stop = threading.Event()

    def kill_a_candidate_once_two_run_at_once():
        # two RUNNING at once is the direct evidence that the pool runs candidates in parallel; killing one of
        # them crashes a run mid-evaluation, not before it started
        while not stop.is_set() and len(list(meet.glob("started-*"))) < 2:
            time.sleep(0.2)
        if stop.is_set():  # the run ended without two candidates meeting: the assertions below say so
            return
        try:
            # both are held, so wait for the API to show them: the worker reports a run's pid after starting it
            deadline = time.monotonic() + 120
            while True:
                running = [r for r in stack.flow_runs(tags={"all_": ["evomerge-candidate"]},
                                                      state={"type": {"any_": ["RUNNING"]}}) if r["infrastructure_pid"]]
                if len(running) >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            both_running.append([r["name"] for r in running])
            if running:
                os.kill(int(str(running[0]["infrastructure_pid"]).split(":")[-1]), signal.SIGKILL)
                killed.append(running[0])
        finally:
            (meet / "release").write_text("")

    killer = threading.Thread(target=kill_a_candidate_once_two_run_at_once, daemon=True)
    killer.start()
    sets = [a for o in [*forge_overrides, "evomerge.enabled=true", "evomerge.runtime.executor=deployment",
                        "evomerge.population=4", "evomerge.generations=1", "evomerge.finalists=1",
                        "evomerge.runtime.run_retries=1",
                        "evomerge.runtime.poll_s=0.5", "evomerge.gates.perplexity=100"]
            for a in ("--set", o)]
    r = stack.cli("run", *sets, env=stack.env(**S3_ENV), timeout=600)
    stop.set()
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{stack.log('worker-gpu')}"
    assert len(killed) == 1 and len(both_running[0]) == 2, (both_running, stack.log("worker-gpu"))
    held = {p.name for p in meet.glob("started-*")}
    assert f"started-{str(killed[0]['infrastructure_pid']).split(':')[-1]}" in held, held

    runs = stack.flow_runs(tags={"all_": ["evomerge-candidate"]})
    states = sorted(x["state_type"] for x in runs)
    assert states == ["COMPLETED"] * 4 + ["CRASHED"], [(x["name"], x["state_type"]) for x in runs]
    crashed = next(x for x in runs if x["state_type"] == "CRASHED")
    assert crashed["id"] == killed[0]["id"]
    retry = [x for x in runs if x["name"].endswith("-retry1")]
    assert len(retry) == 1 and retry[0]["name"] == crashed["name"] + "-retry1"
    assert all(x["parent_task_run_id"] for x in runs)  # subflows of the evomerge stage's task run


    # The evaluator keeps the pool's limit of runs in flight (created -> end) and the pool runs at most
    # that many (start -> end): 2 each, never more.
    def peak(windows):
        events = sorted([(_ts(a), 1) for a, _ in windows] + [(_ts(b), -1) for _, b in windows])
        level = top = 0
        for _, d in events:
            level += d
            top = max(top, level)
        return top

    timeline = [(x["name"], x["created"], x["start_time"], x["end_time"]) for x in runs]
    assert peak([(x["created"], x["end_time"]) for x in runs]) == 2, timeline
    assert peak([(x["start_time"], x["end_time"]) for x in runs]) == 2, timeline

    # every candidate scored (none worst): the killed one by its retry; history read back from S3
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=moto_s3, key="test", secret="test")
    (hist_key,) = [k for k in _s3_keys(moto_s3, "prod/evomerge/") if k.endswith("/history.json")]
    history = json.loads(fs.cat(f"forge/{hist_key}"))
    assert len(history["candidates"]) == 4 and len(history["generations"]) == 1
    assert all(c["status"] == "ok" and c["fitness"] > -1e8 for c in history["candidates"])


def test_a_worker_stops_promptly_on_sigterm_even_without_its_server(tmp_path_factory):
    """What Docker and Kubernetes do when a stack stops: the server goes away, then each worker gets SIGTERM.
    `agent-forge worker` passes it on and kills a worker still retrying a missing API after --grace."""
    s = PrefectStack(tmp_path_factory.mktemp("prefect-sigterm"))
    try:
        s.start_server()
        r = s.cli("deploy", "--set", "store.url=s3://forge/x")
        assert r.returncode == 0, r.stderr
        worker = s.start_worker("cpu")
        deadline = time.monotonic() + 60
        while "polls every" not in s.log("worker-cpu") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # the worker is polling
        server = next(p for name, p in s.procs if name == "server")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(2)  # the worker now retries an API that is gone
        t0 = time.monotonic()
        worker.send_signal(signal.SIGTERM)  # to the supervisor only: it passes the signal on
        worker.wait(timeout=30)
        stopped = time.monotonic() - t0
        print(f"worker stopped {stopped:.1f}s after SIGTERM with its server gone")
        assert stopped < 14, s.log("worker-cpu")  # --grace 6 s, then the kill
        assert not _running_children(worker.pid)
    finally:
        s.stop()


def _running_children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return out
