"""What both daemons share: the launch spec, the parent watchdog, telemetry, the torch check."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import zmq

from ipc import codec, transport
from ipc.transport import PartyKeys

PR_SET_PDEATHSIG = 1
SUBSCRIBER_WAIT_S = 5.0


@dataclass(frozen=True)
class DaemonSpec:
    """Everything a daemon needs to start; the supervisor writes it as JSON in the run dir."""

    role: str  # "draft" or "target"
    run_id: str
    model: str  # resolved model folder
    device_ids: tuple[str, ...]  # specdeck ids, e.g. ("cuda:1",)
    torch_devices: tuple[str, ...]  # names inside the daemon, e.g. ("cuda:0",)
    backend: str  # cuda, hip or cpu
    simulated: bool
    control_endpoint: str  # the daemon binds a ROUTER here
    telemetry_endpoint: str  # the supervisor's SUB; the daemon connects its XPUB here
    parent_pid: int
    pdeathsig: bool  # only when launched from the parent's main thread
    trust_remote_code: bool = False
    config_path: str = ""
    heartbeat_s: float = 0.5
    draft_model: str = ""  # target in in-process mode: the draft to load beside it
    draft_torch_devices: tuple[str, ...] = ()
    draft_trust_remote_code: bool = False
    draft_endpoint: str = ""  # target in split mode: the draft daemon's ROUTER
    draft_timeout_s: float = 600.0
    transport: str = "ipc"  # "tcp": CURVE keys come on stdin, the bound port goes out as `bound`
    extra: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> DaemonSpec:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
        return cls(**values)


class DaemonStartError(RuntimeError):
    """A daemon cannot start (wrong torch, model that does not load); one line for the user."""


def watch_parent(parent_pid: int, use_pdeathsig: bool, interval_s: float = 0.2) -> None:
    """Exit this process when specdeck goes away, even if specdeck was SIGKILLed."""
    if use_pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the getppid watchdog below still covers it
    # a wrapper interpreter (conda run, a shell script) may sit between us and specdeck
    first_ppid = os.getppid()

    def gone() -> bool:
        if os.getppid() != first_ppid:
            return True
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    if gone():
        os._exit(1)  # the parent died before we got here

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if gone():
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


class Telemetry:
    """A thread that owns the daemon's XPUB socket: queued events plus heartbeats on a clock.

    The thread is the daemon's sign of life, so a long GPU step on the main thread never
    looks like a hang; every event it sends counts as a sign of life too.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        role: str,
        heartbeat_s: float,
        sockopts: dict | None = None,
    ) -> None:
        self.role = role
        self._ctx = ctx
        self._endpoint = endpoint
        self._heartbeat_s = heartbeat_s
        self._sockopts = sockopts or {}  # tcp: CURVE client of the supervisor's SUB
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def emit(self, type_: str, fields: dict | None = None, arrays: dict | None = None) -> None:
        """Queue one event (a codec message) for the supervisor, signed with this role."""
        self._queue.put(codec.encode(type_, {"role": self.role, **(fields or {})}, arrays=arrays))

    def status(self, state: str, text: str = "") -> None:
        self.emit("status", {"state": state, "text": text})

    def log(self, level: str, text: str) -> None:
        self.emit("log", {"level": level, "text": text})

    def error(self, code: str, text: str) -> None:
        self._queue.put(codec.error_frames(code, text, role=self.role))

    def close(self, timeout: float = 3.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 2000)
        transport.apply(sock, self._sockopts)
        transport.connect(sock, self._endpoint)
        # an XPUB sees the subscription arrive, so no event is lost to a slow joiner
        if sock.poll(int(SUBSCRIBER_WAIT_S * 1000), zmq.POLLIN):
            sock.recv()
        pid = os.getpid()
        next_beat = time.monotonic()
        while True:
            # a heartbeat goes out on time even while events stream, never queued behind them
            if time.monotonic() >= next_beat:
                beat = {"role": self.role, "pid": pid, "time": time.time()}
                sock.send_multipart(codec.encode("heartbeat", beat))
                next_beat = time.monotonic() + self._heartbeat_s
            try:
                frames = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                continue
            if frames is None:
                break
            sock.send_multipart(frames)
        sock.close()


def torch_build() -> str:
    """What this interpreter's torch was built for: cuda, hip or cpu."""
    import torch

    if getattr(torch.version, "hip", None):
        return "hip"
    return "cuda" if torch.version.cuda else "cpu"


def torch_problem(spec: DaemonSpec) -> str | None:
    """Why this interpreter's torch cannot run the devices the daemon was placed on, or None."""
    if spec.simulated or spec.backend == "cpu":
        return None  # simulated devices run on the CPU with any torch
    import torch

    build = torch_build()
    where = ", ".join(spec.device_ids)
    config = spec.config_path or "the config file"
    vendor = {"cuda": "CUDA", "hip": "ROCm"}[spec.backend]
    fix = f"set [backends.{spec.backend}] python = <an interpreter with {vendor} torch> in {config}"
    if build != spec.backend:
        return (
            f"the {spec.role} daemon is placed on {where} but its Python ({sys.executable}) has "
            f"torch {torch.__version__} built for {build}; {fix}"
        )
    if not torch.cuda.is_available():
        return (
            f"the {spec.role} daemon is placed on {where} but torch {torch.__version__} "
            f"({sys.executable}) sees no {vendor} device; check the driver, or {fix}"
        )
    return None


def open_daemon(spec: DaemonSpec, keys: PartyKeys | None = None) -> tuple[Telemetry, zmq.Socket]:
    """Watch the parent, open telemetry and the control socket, and say the model is loading.

    Over tcp (`keys` given) both are CURVE sockets: the ROUTER admits only the run's keys and
    its ephemeral port goes to the supervisor as a `bound` event.
    """
    watch_parent(spec.parent_pid, spec.pdeathsig)
    ctx = zmq.Context()
    if keys is not None:
        transport.start_authenticator(ctx, keys)  # before the bind: no handler admits anyone
    client = keys.client_options("supervisor") if keys is not None else None
    telemetry = Telemetry(ctx, spec.telemetry_endpoint, spec.role, spec.heartbeat_s, client)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)  # a bigger frame drops its peer
    if keys is not None:
        transport.apply(sock, keys.server_options())
    bound = transport.bind(sock, spec.control_endpoint)
    if keys is not None:
        telemetry.emit("bound", {"socket": "control", "endpoint": bound})
    telemetry.status("loading", f"loading {spec.model} on {', '.join(spec.device_ids)}")
    problem = torch_problem(spec)
    if problem:
        start_failed(spec, telemetry, RuntimeError(problem))
        raise DaemonStartError(problem)
    return telemetry, sock


def start_failed(spec: DaemonSpec, telemetry: Telemetry, exc: BaseException) -> int:
    """Tell stderr and the supervisor, in one line, why the daemon could not start; return the
    exit status: 2 for bad input (a model that cannot load), as specdeck's own, else 1."""
    from engine.errors import EngineInputError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"specdeck {spec.role} daemon: {text}", file=sys.stderr)
    telemetry.error("start", text)
    telemetry.close()
    return 2 if isinstance(exc, EngineInputError) else 1


def close_daemon(telemetry: Telemetry, sock: zmq.Socket) -> None:
    """Say the daemon stopped and close its sockets."""
    telemetry.status("stopped")
    telemetry.close()
    sock.close()


def serve_error(sock: zmq.Socket, ident: bytes, code: str, text: str, msg_id: int, role: str):
    """Answer one request with an `error` reply."""
    sock.send_multipart([ident, *codec.error_frames(code, text, msg_id, role)])
