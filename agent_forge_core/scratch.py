"""Scratch space on the local disk: one folder per process under `work_dir` (`proc-<host>-<pid>`), where
stages save the models they build and fan-out jobs merge their candidates.

A process removes its folder when it ends; one that was killed cannot, so every new process removes the
folders of this host's processes that no longer run (a killed run's half-built models, hundreds of MB
each for the default model). Folders of other hosts sharing the disk are left alone.
"""
from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path

from .processes import host_tag, pid_alive

PREFIX = "proc-"

_OWN: dict[str, Path] = {}


def scratch_dir(work_dir: str | os.PathLike) -> Path:
    """This process's scratch folder under `work_dir` (created on first use, removed at exit)."""
    root = Path(work_dir).expanduser().resolve()
    key = str(root)
    if key not in _OWN:
        clean_stale(root)
        own = root / f"{PREFIX}{host_tag()}-{os.getpid()}"
        own.mkdir(parents=True, exist_ok=True)
        _OWN[key] = own
        atexit.register(shutil.rmtree, own, True)
    return _OWN[key]


def clean_stale(root: Path, alive=pid_alive) -> list[Path]:
    """Remove the scratch folders of this host's processes that no longer run."""
    removed = []
    if not root.is_dir():
        return removed
    host = host_tag()
    for d in root.glob(f"{PREFIX}{host}-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
