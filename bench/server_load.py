"""Benchmark: does the Prefect server (SQLite) answer a UI user with errors while a forge run writes to it?

Starts `prefect server start` (SQLite in a fresh PREFECT_HOME) and an `agent-forge worker --pool cpu` on
127.0.0.1, registers the deployments, then twice triggers a forge run on a tiny model (import + cognate)
while a "UI" thread does what a user clicking around does, without retrying anything: every second it
reads flow runs, task runs, artifacts and logs, and every 3 s it submits a custom run (scheduled far in
the future, so no worker takes it). The first forge run updates its progress artifacts every 2 s (the
0.1 cadence), the second at the current default (15 s; `AF_PROGRESS_ARTIFACT_S`). Prints per run: the
forge run's API writes (artifact updates, logs), the UI's requests, 503s and other errors, and latency;
writes bench/results/server_load.json.
Usage: python bench/server_load.py
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from prefect_stack import PrefectStack, api  # noqa: E402


def raw(method: str, url: str, body: dict | None = None) -> tuple[int, float]:
    """One request, no retry: (status, seconds)."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status, time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, time.monotonic() - t0


def ui_user(stack: PrefectStack, deployment_id: str, stop: threading.Event, out: list) -> None:
    a = stack.api_url
    n = 0
    while not stop.is_set():
        for path in ("/flow_runs/filter", "/task_runs/filter", "/artifacts/filter", "/logs/filter"):
            out.append(("read",) + raw("POST", a + path, {"limit": 50}))
        if n % 3 == 0:
            out.append(("create",) + raw("POST", f"{a}/deployments/{deployment_id}/create_flow_run", {
                "parameters": {"overrides": ["cognate.steps=2"]},
                "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": "2099-01-01T00:00:00Z"}}}))
        n += 1
        stop.wait(1.0)


def main() -> None:
    from tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny(tmp / "model")
        stack = PrefectStack(tmp / "home")
        results = {}
        try:
            start = stack.start_server()
            store = f"store.url={tmp}/store"
            r = stack.cli("deploy", "--set", store)
            assert r.returncode == 0, r.stderr
            forge = api("GET", f"{stack.api_url}/deployments/name/forge/forge")
            sets = [f"model.source={model}", store, f"work_dir={tmp}/work", "eval.n_examples=8", "eval.ppl_tokens=512",
                    "eval.ppl_window=64", "eval.max_new_tokens=12", "cognate.steps=60", "cognate.batch_size=4",
                    "cognate.max_len=128", "cognate.lora.r=4", "evomerge.enabled=false"]
            for label, every in (("progress every 2 s (0.1)", "2"), ("progress every 15 s (default)", "15")):
                worker = stack.start_worker("cpu", AF_PROGRESS_ARTIFACT_S=every)
                stop, calls = threading.Event(), []
                ui = threading.Thread(target=ui_user, args=(stack, forge["id"], stop, calls), daemon=True)
                ui.start()
                t0 = time.monotonic()
                run = stack.cli("trigger", "--wait", "--timeout", "900", *sum((["--set", s] for s in
                                [*sets, f"cognate.seed={len(results)}"]), []), timeout=960)
                wall = time.monotonic() - t0
                stop.set()
                ui.join(10)
                worker.terminate()
                worker.wait(30)
                run_id = run.stdout.split()[2] if run.stdout.startswith("flow run") else None
                arts = api("POST", f"{stack.api_url}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}) \
                    if run_id else []
                logs = api("POST", f"{stack.api_url}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}) \
                    if run_id else []
                codes = [c for _, c, _ in calls]
                lat = sorted(s for _, _, s in calls)
                results[label] = {
                    "forge_run": "Completed" in run.stdout, "wall_s": wall, "ui_requests": len(calls),
                    "ui_creates": sum(k == "create" for k, _, _ in calls), "http_503": codes.count(503),
                    "other_errors": sum(c >= 400 and c != 503 for c in codes), "latency_p50_s": lat[len(lat) // 2],
                    "latency_max_s": lat[-1], "artifacts": len(arts), "log_lines_seen": len(logs),
                }
        finally:
            server_log = stack.log("server")
            stack.stop()
    print(f"\nserver healthy after {start:.1f}s")
    print(f"{'forge run':<32}{'ok':>4}{'wall s':>8}{'UI req':>8}{'creates':>8}{'503':>6}{'other':>7}{'p50 s':>8}{'max s':>8}")
    for label, r in results.items():
        print(f"{label:<32}{str(r['forge_run']):>4}{r['wall_s']:>8.1f}{r['ui_requests']:>8}{r['ui_creates']:>8}"
              f"{r['http_503']:>6}{r['other_errors']:>7}{r['latency_p50_s']:>8.3f}{r['latency_max_s']:>8.2f}")
    locked = server_log.count("database is locked")
    print(f"'database is locked' in the server log: {locked}")
    out = ROOT / "bench" / "results" / "server_load.json"
    out.write_text(json.dumps({"server_start_s": start, "runs": results, "server_log_locked": locked}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
