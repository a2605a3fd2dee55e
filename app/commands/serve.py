"""`specdeck serve`: the dashboard as a web page (textual-serve), to watch a GPU box from a laptop.

Every browser tab that opens the page starts its own dashboard process, with the global
options this command was given (`--simulate`, `--config`, `--theme`, `--models-dir`, ...).
There is no login: whoever reaches the port drives the dashboard and can launch runs.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import shlex
import socket
import sys
from typing import Any


def dashboard_command(args: argparse.Namespace) -> str:
    """The shell command each browser session runs: the dashboard with these global options."""
    from app.cli import GLOBAL_OPTIONS

    argv = [sys.executable, "-m", "app.cli"]
    for flag, _, _ in GLOBAL_OPTIONS:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if value is not None:
            argv += [flag, value]
    for folder in getattr(args, "models_dir", None) or []:
        argv += ["--models-dir", folder]
    return shlex.join(argv)


def listen_problem(host: str, port: int) -> str | None:
    """Why this server could not listen on host:port (a busy port, an unknown host), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}"
    return None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_server(command: str, **kw: Any) -> Any:
    """A textual-serve server that, when it stops, quits every browser's dashboard and waits
    for it (their runs are stopped as `ctrl+q` stops them) before its event loop closes."""
    from textual_serve.server import Server

    class DashboardServer(Server):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.sessions: set[asyncio.Task] = set()

        async def handle_websocket(self, request: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None
            self.sessions.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                self.sessions.discard(task)

        async def on_shutdown(self, app: Any) -> None:
            # a cancelled session closes its socket, then tells its dashboard to quit and waits
            for task in self.sessions:
                task.cancel()
            await asyncio.gather(*self.sessions, return_exceptions=True)

    return DashboardServer(command, **kw)


def main(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl+C or SIGTERM; a port that cannot be used is one line, 2."""
    if args.port == 0:  # the page must name the port its websocket goes to
        print("specdeck: serve needs a port number, not 0", file=sys.stderr)
        return 2
    problem = listen_problem(args.host, args.port)
    if problem:
        print(f"specdeck: {problem}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        print(
            f"specdeck: warning: serving on {args.host}: anyone who reaches port {args.port} "
            "drives this dashboard and can launch runs (there is no login); see docs/serve.md",
            file=sys.stderr,
        )
    server = dashboard_server(
        dashboard_command(args),
        host=args.host,
        port=args.port,
        title="specdeck",
        public_url=args.public_url,
    )
    try:
        server.serve()
    except OSError as exc:  # taken between the check and the server's own bind
        print(f"specdeck: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0
