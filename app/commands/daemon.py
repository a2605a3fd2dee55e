"""`specdeck daemon --role draft|target --spec FILE`: one daemon, started by the supervisor."""

from __future__ import annotations

import argparse
import signal


def main(args: argparse.Namespace) -> int:
    from ipc.daemon_runtime import DaemonSpec

    # specdeck stops its daemons itself; a terminal's Ctrl-C is not for them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = DaemonSpec.load(args.spec)
    if args.role == "draft":
        from ipc.draft_daemon import main as run_daemon
    else:
        from ipc.target_daemon import main as run_daemon
    return run_daemon(spec)
