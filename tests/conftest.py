import os
from collections import Counter
import socket
import tempfile
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Ephemeral Prefect (no server to start by hand) with its database in a throwaway home; set before
# Prefect is imported anywhere.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="af-prefect-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh ephemeral server migrates its database first: ~25 s on 2 busy cores, over Prefect's 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Tiny models run faster on one thread, and leave the other core to the Prefect server.
torch.set_num_threads(1)

# Small budgets so the whole suite stays in minutes on 2 cores.
TINY_OVERRIDES = [
    "eval.n_examples=8", "eval.ppl_tokens=512", "eval.ppl_window=64", "eval.max_new_tokens=12", "eval.batch_size=8",
    "cognate.focuses=[reasoning,memory,language]",  # quick trains two; the tests were written for three
    "cognate.steps=4", "cognate.batch_size=4", "cognate.max_len=128", "cognate.warmup=1", "cognate.lora.r=4",
    # on by default (the whole chain); each has its own tests, and tests/test_chain.py runs them all together
    "evomerge.enabled=false", "quietstar.enabled=false", "loop.enabled=false", "baking.enabled=false",
    "experts.enabled=false", "compression.enabled=false",
    "bitnet.float_layers=[]",  # the default keeps the first and last layers float: the tiny model's only two
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny_settings(tmp_path, tiny_model_dir):
    from agent_forge_core.config import load_settings

    def make(*extra: str):
        return load_settings(
            overrides=[f"model.source={tiny_model_dir}", f"store.url={tmp_path}/store", f"store.cache_dir={tmp_path}/cache",
                       f"work_dir={tmp_path}/work", *TINY_OVERRIDES, *extra]
        )

    return make


@pytest.fixture
def body_calls(monkeypatch):
    """Counts how often each stage's task really builds something (a cached stage only reads manifests)."""
    import tasks.stage_task as stage_task_mod

    calls = Counter()
    real = stage_task_mod.run_stage

    def counting(spec, planned, ctx):
        if not all(ctx.store.exists(k) for k in planned.keys.values()):
            calls[spec.name] += 1
        return real(spec, planned, ctx)

    monkeypatch.setattr(stage_task_mod, "run_stage", counting)
    return calls


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on 127.0.0.1 (server mode, as s3fs's own tests use), stopped afterwards."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="forge")
    yield endpoint
    server.stop()


def pytest_sessionfinish(session, exitstatus):
    # Prefect stops its ephemeral server at exit and logs that to the stderr pytest has closed by then
    # ("I/O operation on closed file"); stop it while the stream is still open, after the run logs
    # still queued for it are sent.
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all(timeout=5)
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
