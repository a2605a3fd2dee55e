"""Who owns a run record or a run directory, and whether that process has ended.

After a SIGKILL nothing runs in specdeck to close what it had open; the next specdeck
command uses these to tell a record or directory still in use from one left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

RUN_DIR_PREFIX = "specdeck-"
OWNER_FILE = "owner.json"  # in a run directory: who made it
MAX_IPC_PATH = 90  # unix socket paths stop at 107 bytes; leave room for the socket names


def process_identity(pid: int | None = None) -> dict:
    """Who owns a record or a run directory: host, pid and the process's start time."""
    import psutil

    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": psutil.Process(pid).create_time()}


def owner_gone(identity: Any) -> bool:
    """Whether the process an identity names has ended (on this host; another host's: never)."""
    import psutil

    if not isinstance(identity, dict) or identity.get("host") != socket.gethostname():
        return False
    try:
        process = psutil.Process(int(identity["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
    return abs(started - float(identity.get("started", 0))) > 1.0  # its pid was reused


def run_dir_base() -> str | None:
    """Where run directories go: the temp dir, or /tmp where its path is too long for sockets."""
    return None if len(tempfile.gettempdir()) < MAX_IPC_PATH - 30 else "/tmp"


def remove_stale_run_dirs() -> list[Path]:
    """Remove the run directories whose specdeck process is gone (it was SIGKILLed)."""
    removed = []
    for folder in Path(run_dir_base() or tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            identity = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours to judge: another user's, or one being made
        if owner_gone(identity):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
