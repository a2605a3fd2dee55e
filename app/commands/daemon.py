"""`specdeck daemon --role draft|target --spec FILE`: one daemon, started by the supervisor."""

from __future__ import annotations

import argparse
import signal
import sys


def main(args: argparse.Namespace) -> int:
    from ipc.daemon_runtime import DaemonSpec

    # specdeck stops its daemons itself; a terminal's Ctrl-C is not for them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = DaemonSpec.load(args.spec)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # missing, not JSON, not a spec
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(
            f"specdeck daemon: cannot read the launch spec {args.spec}: {reason}", file=sys.stderr
        )
        return 2
    keys = None
    if spec.transport == "tcp":
        from ipc.transport import read_keys

        try:
            keys = read_keys(sys.stdin.buffer)
        except (OSError, ValueError) as exc:
            print(f"specdeck daemon: {exc}", file=sys.stderr)
            return 2
    if args.role == "draft":
        from ipc.draft_daemon import main as run_daemon
    else:
        from ipc.target_daemon import main as run_daemon
    return run_daemon(spec, keys)
