"""Starts daemons in a private run directory, watches them, and stops them (no torch here)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from ipc import codec
from ipc import transport as wire
from ipc.daemon_runtime import DaemonSpec
from ipc.launch import DaemonLaunch, LaunchSite, spawn
from ipc.owners import OWNER_FILE, RUN_DIR_PREFIX, process_identity, run_dir_base
from ipc.transport import IPC, RunKeys, Transport

HEARTBEAT_S = 0.5
LIVENESS_S = 3.0  # a ready daemon silent this long is gone
# before it is ready a daemon loads torch, CUDA and weights; some of that holds the GIL for
# seconds (dlopen of libtorch_cuda, cuInit), which starves its heartbeat thread
LOADING_LIVENESS_S = 30.0
BIND_TIMEOUT_S = 30.0  # a daemon binds before it imports torch: a second or two at most


@dataclass(frozen=True)
class Incoming:
    """One thing the supervisor heard: a control reply or a telemetry event."""

    role: str  # the daemon it came from ("" when a telemetry frame could not be read)
    channel: str  # "control" or "telemetry"
    message: codec.Message | None
    problem: str = ""  # set when the frames broke the protocol


def exit_text(status: int) -> str:
    """`exit status 1` or `killed by SIGKILL (exit status -9)`."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name} (exit status {status})"
    return f"exit status {status}"


class Daemon:
    """One started daemon: its process, its control socket and what it last said."""

    def __init__(self, spec: DaemonSpec, popen: subprocess.Popen, control: zmq.Socket, log: Path):
        self.spec = spec
        self.role = spec.role
        self.popen = popen
        self.control = control
        self.log_path = log
        self.started = time.monotonic()
        self.last_seen = self.started
        self.welcome: dict | None = None
        self.error_text: str | None = None  # the daemon's own last error event
        self.expected_exit = False
        # tcp: the control endpoint is known once the daemon says where it bound
        self.endpoint: str | None = (
            None if wire.is_unbound(spec.control_endpoint) else spec.control_endpoint
        )
        self.unsent: list[list[bytes]] = []  # requests made before the endpoint was known

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 1) -> str:
        """The last non-empty lines of the daemon's output, for when it died without a word."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


class Supervisor:
    """A private run directory, the daemons started there and their sockets: `ipc://` in
    the run dir, or `tcp://` with CURVE keys made for this run (`ipc.transport`)."""

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        liveness_s: float = LIVENESS_S,
        transport: Transport = IPC,
    ) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=run_dir_base()))  # 0700
        (self.run_dir / OWNER_FILE).write_text(json.dumps(process_identity()), encoding="utf-8")
        self.liveness_s = liveness_s
        self._drained = True  # whether the last poll read everything that had arrived
        self._backlog: list[Incoming] = []  # heard while waiting for a daemon's endpoint
        self.ctx = zmq.Context()
        self.keys = RunKeys.new() if transport.is_tcp else None
        self._auth = None
        self.telemetry = self.ctx.socket(zmq.SUB)
        self.telemetry.setsockopt(zmq.LINGER, 0)
        self.telemetry.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)
        self.telemetry.setsockopt(zmq.RCVHWM, 0)
        self.telemetry.setsockopt(zmq.SUBSCRIBE, b"")
        if self.keys is not None:
            own = self.keys.party("supervisor")
            self._auth = wire.start_authenticator(self.ctx, own)  # before the bind
            wire.apply(self.telemetry, own.server_options())
        wanted = transport.bind_endpoint(self.run_dir, "telemetry")
        self.telemetry_endpoint = wire.bind(self.telemetry, wanted)
        self.site = LaunchSite(
            self.run_dir,
            Path(log_dir or self.run_dir),
            heartbeat_s,
            transport,
            self.keys,
            self.telemetry_endpoint if transport.is_tcp else "",
        )
        self.daemons: dict[str, Daemon] = {}
        self._ids = 0
        self._closed = False

    def endpoint(self, name: str) -> str:
        """Where a socket named `name` binds: `ipc://` in the run dir, or `tcp://HOST:0`."""
        return self.site.endpoint(name)

    def start(self, launch: DaemonLaunch, spawner: Callable[[DaemonLaunch], Any] = spawn) -> Daemon:
        """Start one daemon as its launch says (`ipc.launch.daemon_launch`) and connect to it;
        `spawner` starts the process (on a cluster node: `ipc.cluster_daemons`)."""
        if launch.spec.telemetry_endpoint != self.telemetry_endpoint:
            raise ValueError(f"the {launch.role} daemon's launch was built for another supervisor")
        if launch.spec.pdeathsig and threading.current_thread() is not threading.main_thread():
            # the kernel signals the child when the thread that started it ends
            raise ValueError(f"the {launch.role} daemon's launch was built on another thread")
        if (launch.keys is not None) != (self.keys is not None):
            raise ValueError(f"the {launch.role} daemon's launch has another transport")
        popen = spawner(launch)
        control = self.ctx.socket(zmq.DEALER)
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)
        if self.keys is not None:
            wire.apply(control, self.keys.party("supervisor").client_options(launch.role))
        daemon = Daemon(launch.spec, popen, control, launch.log_path)
        if daemon.endpoint is not None:
            wire.connect(control, daemon.endpoint)
        self.daemons[launch.role] = daemon
        return daemon

    def request(self, role: str, type_: str, fields: dict | None = None) -> int:
        """Send one control request to a daemon; the reply comes back through `poll`.
        Over tcp a request made before the daemon said where it bound waits for that."""
        self._ids += 1
        daemon = self.daemons[role]
        frames = codec.encode(type_, fields, id=self._ids)
        if daemon.endpoint is None:
            daemon.unsent.append(frames)
        else:
            daemon.control.send_multipart(frames)
        return self._ids

    def control_endpoint(self, role: str, timeout_s: float = BIND_TIMEOUT_S) -> str:
        """The endpoint a daemon's control socket bound, once it says (at once over ipc).

        What is heard meanwhile comes back from the next `poll`; RuntimeError (one line
        naming the role) if the daemon exits or says nothing of it in `timeout_s`.
        """
        daemon = self.daemons[role]
        deadline = time.monotonic() + timeout_s
        while daemon.endpoint is None:
            status = daemon.popen.poll()
            if status is not None:
                said = daemon.error_text or daemon.log_tail()
                raise RuntimeError(
                    f"the {role} daemon (pid {daemon.pid}) exited ({exit_text(status)}) "
                    f"before it bound its control socket" + (f": {said}" if said else "")
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {role} daemon (pid {daemon.pid}) did not say where it bound its "
                    f"control socket within {timeout_s:g} s"
                )
            self._backlog.extend(self._poll_sockets(0.05))
        return daemon.endpoint

    def poll(self, timeout_s: float) -> list[Incoming]:
        """Wait up to `timeout_s` for replies and events; return all that arrived."""
        if self._backlog:
            got, self._backlog = self._backlog, []
            return got + self._poll_sockets(0)
        return self._poll_sockets(timeout_s)

    def _poll_sockets(self, timeout_s: float) -> list[Incoming]:
        poller = zmq.Poller()
        poller.register(self.telemetry, zmq.POLLIN)
        by_socket = {}
        for daemon in self.daemons.values():
            poller.register(daemon.control, zmq.POLLIN)
            by_socket[daemon.control] = daemon
        got: list[Incoming] = []
        ready = dict(poller.poll(int(timeout_s * 1000)))
        while ready:
            for sock in ready:
                daemon = by_socket.get(sock)
                channel = "telemetry" if daemon is None else "control"
                got.append(self._read(sock, channel, daemon))
            ready = dict(poller.poll(0))
            if len(got) > 1000:
                break  # let the caller handle a burst before reading on
        self._drained = not ready
        return got

    def _read(self, sock: zmq.Socket, channel: str, daemon: Daemon | None) -> Incoming:
        frames = sock.recv_multipart()
        try:
            msg = codec.decode(frames)
        except codec.ProtocolError as exc:
            return Incoming(daemon.role if daemon else "", channel, None, str(exc))
        except Exception as exc:  # a codec fault must not end the run; the caller hears of it
            return Incoming(daemon.role if daemon else "", channel, None, type(exc).__name__)
        role = daemon.role if daemon else str(msg.fields.get("role", ""))
        if role not in self.daemons:
            return Incoming("", channel, None, f"a {msg.type} event from no daemon: {role!r}")
        found = self.daemons.get(role)
        if found is not None:
            if msg.type == "bound" and channel == "telemetry":
                problem = self._bound(found, msg)
                if problem:
                    return Incoming(role, channel, None, problem)
            found.last_seen = time.monotonic()
            if msg.type == "error" and channel == "telemetry":
                found.error_text = msg["text"]
        return Incoming(role, channel, msg)

    def _bound(self, daemon: Daemon, msg: codec.Message) -> str | None:
        """Connect to the endpoint a tcp daemon bound and send what waited; or why not."""
        endpoint = msg["endpoint"]
        if daemon.endpoint is not None or msg["socket"] != "control":
            return f"a bound event the {daemon.role} daemon had no reason to send"
        problem = wire.tcp_endpoint_problem(endpoint)
        if problem:
            return f"the {daemon.role} daemon's bound endpoint is {problem}"
        wire.connect(daemon.control, endpoint)
        daemon.endpoint = endpoint
        for frames in daemon.unsent:
            daemon.control.send_multipart(frames)
        daemon.unsent.clear()
        return None

    def exited(self) -> list[tuple[Daemon, int]]:
        """Daemons that exited without being asked to, with their exit status."""
        gone = []
        for daemon in self.daemons.values():
            status = daemon.popen.poll()
            if status is not None and not daemon.expected_exit:
                daemon.expected_exit = True  # report each death once
                gone.append((daemon, status))
        return gone

    def silent(self) -> list[tuple[Daemon, float]]:
        """Running daemons that said nothing for their liveness deadline, with that deadline.

        Judged only after a poll that read everything waiting, so a reader that fell behind
        never takes a backlog of signs of life for silence.
        """
        if not self._drained:
            return []
        now = time.monotonic()
        gone = []
        for daemon in self.daemons.values():
            deadline = self.liveness_s if daemon.welcome else LOADING_LIVENESS_S
            if daemon.popen.poll() is None and now - daemon.last_seen > deadline:
                gone.append((daemon, deadline))
        return gone

    def stop(self, grace_s: float = 3.0) -> None:
        """Ask every daemon to shut down, terminate those that do not, kill the rest."""
        if self._closed:
            return
        self._closed = True
        alive = [d for d in self.daemons.values() if d.popen.poll() is None]
        for daemon in alive:
            daemon.expected_exit = True
            with contextlib.suppress(zmq.ZMQError):
                daemon.control.send_multipart(codec.encode("shutdown", id=0), zmq.NOBLOCK)
        _wait_all(alive, grace_s)
        for daemon in alive:
            if daemon.popen.poll() is None:
                daemon.popen.terminate()
        _wait_all(alive, 1.0)
        for daemon in alive:
            if daemon.popen.poll() is None:
                daemon.popen.kill()
            daemon.popen.wait()
        for daemon in self.daemons.values():
            daemon.control.close()
        self.telemetry.close()
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _wait_all(daemons: list[Daemon], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for daemon in daemons:
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.popen.wait(max(0.0, deadline - time.monotonic()))
