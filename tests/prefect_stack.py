"""A real Prefect server and workers on 127.0.0.1 for the deployment tests; every process is stopped."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, retries: int = 20) -> tuple[int, bytes]:
    """One HTTP call; 503 (server busy or still starting) is retried with backoff."""
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(retries):
        req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == retries - 1:
                raise
        time.sleep(min(0.25 * 2 ** attempt, 4))
    raise AssertionError("unreachable")


def api(method: str, url: str, body: dict | None = None):
    return json.loads(http(method, url, body)[1] or b"null")


class PrefectStack:
    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PREFECT_HOME=str(self.home), PREFECT_API_URL=self.api_url, PREFECT_SERVER_API_PORT=str(self.port),
                   PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_WORKER_PREFETCH_SECONDS="5", **extra)  # the poll interval: `agent-forge worker`'s
        return env

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))
        return p

    def start_server(self, timeout: float = 90) -> float:
        t0 = time.monotonic()
        p = self.spawn("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                       self.env())
        while time.monotonic() - t0 < timeout:
            if p.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.log('server')}")
            try:
                if http("GET", f"{self.api_url}/health", retries=1)[0] == 200:
                    return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server not healthy after {timeout}s: {self.log('server')}")

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "agent-forge"), *args], env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def start_worker(self, pool: str, **env: str) -> subprocess.Popen:
        return self.spawn(f"worker-{pool}", [str(BIN / "agent-forge"), "worker", "--pool", pool], self.env(**env))

    def log(self, name: str) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def flow_runs(self, **flt) -> list[dict]:
        return api("POST", f"{self.api_url}/flow_runs/filter", {"flow_runs": flt, "sort": "START_TIME_ASC"})

    def wait_final(self, run_id: str, timeout: float = 600) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            run = api("GET", f"{self.api_url}/flow_runs/{run_id}")
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not final after {timeout}s")
