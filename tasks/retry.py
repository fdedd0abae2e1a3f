"""Which failures Prefect retries: transient ones (network, object store) only. A failed gate, a bad
config, a corrupted checkpoint or a model that does not load fails at once."""
from __future__ import annotations

from agent_forge_core.errors import CheckpointCorrupted, ConfigError, GateFailed, ModelLoadError, TransientError

NEVER_RETRY = (GateFailed, ConfigError, CheckpointCorrupted, ModelLoadError, FileNotFoundError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, NEVER_RETRY):
        return False
    return isinstance(exc, (TransientError, ConnectionError, TimeoutError, OSError))


def retry_condition(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified below
        return is_transient(exc)
    return False
