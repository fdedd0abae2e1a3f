"""Test-only, on PYTHONPATH of one worker: holds the first two stage-job runs inside their job until the test
releases them, so the test sees two candidates mid-evaluation at once whatever the machine's start-up jitter.

Each job process writes `started-<pid>` into $AF_TEST_RENDEZVOUS; the first two then wait for a `release` file
(at most 300 s). Later processes (the third candidate, a retry) pass straight through.
"""
import os

_DIR = os.environ.get("AF_TEST_RENDEZVOUS")
if _DIR:
    import time
    from pathlib import Path

    import agent_forge_core.fanout as _fanout

    _inner = _fanout.run_job

    def _held_run_job(job, settings, request):
        here = Path(_DIR)
        first_two = len(list(here.glob("started-*"))) < 2
        (here / f"started-{os.getpid()}").write_text(str(request.get("id")))
        deadline = time.monotonic() + 300
        while first_two and not (here / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return _inner(job, settings, request)

    _fanout.run_job = _held_run_job
