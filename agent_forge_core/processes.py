"""Who wrote what, on which machine: the host tag and process liveness that scratch folders, store prefixes
and ephemeral-server reaping use to tell a running writer from one that was killed."""
from __future__ import annotations

import os
import re
import socket


def host_tag() -> str:
    """This host's name, letters and digits only (it goes into folder names between dashes)."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True
