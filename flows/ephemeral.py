"""Prefect's ephemeral server (a `uvicorn` subprocess an `agent-forge run` starts when no PREFECT_API_URL is
set) outlives a run killed with SIGKILL: nothing runs in the killed process to stop it. The next run finds
such orphans -- processes with PREFECT__SERVER_EPHEMERAL=1 and this PREFECT_HOME in their environment
whose parent is gone -- and stops them. A SIGTERM'd run stops its server itself (`stop_on_sigterm`).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from agent_forge_core.processes import pid_alive as _alive
from agent_forge_core.processes import proc_stat


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def ephemeral_servers(prefect_home: str | None) -> dict[int, int]:
    """Running ephemeral Prefect servers of this PREFECT_HOME, {pid: parent pid} (Linux /proc)."""
    if not Path("/proc").is_dir():
        return {}
    home = str(Path(prefect_home).expanduser().resolve()) if prefect_home else None
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        pid = int(d.name)
        try:
            env = _environ(pid)
            if env.get("PREFECT__SERVER_EPHEMERAL") != "1":
                continue
            theirs = env.get("PREFECT_HOME")
            if (str(Path(theirs).expanduser().resolve()) if theirs else None) != home:
                continue
            if _alive(pid):
                found[pid] = int(proc_stat(pid)[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def orphaned_servers(prefect_home: str | None) -> list[int]:
    """Ephemeral Prefect servers of this PREFECT_HOME whose parent process is gone."""
    return [pid for pid, parent in ephemeral_servers(prefect_home).items() if parent == 1 or not _alive(parent)]


def reap_orphaned_servers(prefect_home: str | None, wait_s: float = 5.0) -> list[int]:
    """Stop them: SIGTERM, then SIGKILL after `wait_s`. Returns their pids."""
    pids = orphaned_servers(prefect_home)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    return pids


def stop_on_sigterm() -> None:
    """SIGTERM (what `kill`, Docker and Kubernetes send) ends the run like Ctrl-C: exit handlers run, and
    Prefect's exit handler stops its ephemeral server."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
