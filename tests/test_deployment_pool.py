"""DeploymentPool's decisions against a scripted fake server: which runs are retried, timed out,
cancelled or given up as lost, and that a job that merely returns a bad result is never retried. The pool
is generic: the job here is the EvoMerge candidate job, whose lost result scores worst."""
from __future__ import annotations

import json
from types import SimpleNamespace
from uuid import uuid4

import pytest

from agent_forge_core.evomerge.candidate import CANDIDATE_JOB
from agent_forge_core.evomerge.fitness import WORST
from agent_forge_core.store import CheckpointStore
from tasks.deployment_pool import DeploymentPool


class FakeServer:
    """Each launched run follows a script: a list of state types, one per poll (the last one repeats)."""

    def __init__(self, scripts: list[list[str]], store: CheckpointStore, write_result: bool = True):
        self.scripts = scripts
        self.store = store
        self.write_result = write_result
        self.runs: dict = {}
        self.launched: list[tuple[int, int]] = []
        self.cancelled: list = []

    def launch(self, request, attempt):
        rid = uuid4()
        self.runs[rid] = {"script": list(self.scripts[len(self.launched)]), "request": request}
        self.launched.append((request["id"], attempt))
        return rid

    def read_flow_run(self, rid):
        run = self.runs[rid]
        kind = run["script"].pop(0) if len(run["script"]) > 1 else run["script"][0]
        if kind == "COMPLETED" and self.write_result:
            req = run["request"]
            result = {"index": req["id"], "recipe": req["recipe"], "status": "ok", "fitness": -3.0 - req["id"]}
            self.store.write_file(CANDIDATE_JOB.result_path(req), json.dumps({"request": req, "result": result}).encode())
        return SimpleNamespace(state=SimpleNamespace(type=SimpleNamespace(value=kind), name=kind.title(), message="boom"))

    def set_flow_run_state(self, rid, state, force=False):
        self.cancelled.append(rid)
        self.runs[rid]["script"] = ["CANCELLED"]


@pytest.fixture
def make(tiny_settings):
    def make(scripts, retries=1, timeout=10.0, write_result=True):
        settings = tiny_settings(f"evomerge.runtime.run_retries={retries}", f"evomerge.runtime.run_timeout_s={timeout}",
                                 "evomerge.runtime.poll_s=1")
        store = CheckpointStore.from_settings(settings.store)
        server = FakeServer(scripts, store, write_result)
        clock = {"t": 0.0}
        ev = DeploymentPool(CANDIDATE_JOB, settings.evomerge.runtime, store, 2, server, server.launch,
                            clock=lambda: clock["t"], sleep=lambda s: clock.__setitem__("t", clock["t"] + s))
        return ev, server, clock

    return make


def req(i):
    return {"run_id": "r", "id": i, "genome": [0.5], "recipe": {"merge_method": "linear", "i": i}}


def test_completed_run_result_comes_from_the_store_and_a_bad_score_is_not_retried(make):
    ev, server, _ = make([["SCHEDULED", "RUNNING", "COMPLETED"]])
    h = ev.submit(req(0))
    got_h, result = ev.wait_any([h])
    assert got_h is h and result["status"] == "ok" and result["fitness"] == -3.0
    assert server.launched == [(0, 0)]


def test_crashed_and_failed_runs_are_relaunched_then_scored_worst(make):
    ev, server, _ = make([["RUNNING", "CRASHED"], ["RUNNING", "COMPLETED"]], retries=1)
    h = ev.submit(req(0))
    _, result = ev.wait_any([h])
    assert result["status"] == "ok" and server.launched == [(0, 0), (0, 1)]

    ev, server, _ = make([["FAILED"], ["CRASHED"]], retries=1)
    _, result = ev.wait_any([ev.submit(req(1))])
    assert result["status"] == "crashed" and result["fitness"] == WORST and "retries spent" in result["error"]
    assert server.launched == [(1, 0), (1, 1)]


def test_timeout_counts_running_time_only_cancels_and_retries(make):
    # 30 polls queued (30 s, over the 10 s timeout) do not count; 12 polls running do
    ev, server, clock = make([["SCHEDULED"] * 30 + ["RUNNING"] * 100, ["COMPLETED"]], timeout=10.0)
    h = ev.submit(req(0))
    _, result = ev.wait_any([h])
    assert result["status"] == "ok" and server.launched == [(0, 0), (0, 1)]
    assert len(server.cancelled) == 1 and 40 <= clock["t"] <= 43


def test_completed_without_a_result_is_retried_cancelled_is_worst(make):
    ev, server, _ = make([["COMPLETED"], ["COMPLETED"]], retries=1, write_result=False)
    _, result = ev.wait_any([ev.submit(req(0))])
    assert result["status"] == "crashed" and "without writing its result" in result["error"]
    assert server.launched == [(0, 0), (0, 1)]

    ev, server, _ = make([["CANCELLED"]], retries=3)
    _, result = ev.wait_any([ev.submit(req(0))])
    assert result["fitness"] == WORST and server.launched == [(0, 0)]


def test_wait_any_returns_the_first_finished_of_several(make):
    ev, server, _ = make([["RUNNING"] * 5 + ["COMPLETED"], ["RUNNING", "COMPLETED"]])
    a, b = ev.submit(req(0)), ev.submit(req(1))
    got, result = ev.wait_any([a, b])
    assert got is b and result["index"] == 1
