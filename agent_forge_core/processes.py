"""Who wrote what, on which machine: the host tag and process liveness that scratch folders, store prefixes
and ephemeral-server reaping use to tell a running writer from one that was killed."""
from __future__ import annotations

import os
import re
import socket


def host_tag() -> str:
    """This host's name, letters and digits only (it goes into folder names between dashes)."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first, then the parent pid); OSError when
    there is no such process or no /proc."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (exited, not yet reaped -- containers whose PID 1 does not reap
    leave them for good) counts as gone: signal 0 still reaches it, /proc says state Z."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        pass
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:  # no /proc (macOS) or gone meanwhile: signal 0 said it ran
        return True
