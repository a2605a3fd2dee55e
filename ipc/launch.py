"""A daemon's launch, built whole in one function: argv, interpreter, environment, endpoints, spec.

A placed role (a role, its model, the Devices it was placed on) becomes a `DaemonLaunch`;
`ipc.supervisor.Supervisor.start` writes its spec and runs its argv, adding nothing. No torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from backends.base import Device
from backends.visibility import process_backend, torch_devices, visibility_env
from ipc.daemon_runtime import DaemonSpec
from ipc.transport import IPC, PartyKeys, RunKeys, Transport

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # on every daemon's PYTHONPATH


@dataclass(frozen=True)
class LaunchSite:
    """Where a supervisor starts its daemons: its private run dir, their logs, its heartbeat,
    and how their sockets reach each other (over tcp: the run's keys, the bound telemetry)."""

    run_dir: Path  # mode 0700; the daemons' sockets, specs and working directory
    log_dir: Path
    heartbeat_s: float
    transport: Transport = IPC
    keys: RunKeys | None = field(default=None, repr=False)  # tcp: one keypair per party
    telemetry: str = ""  # tcp: the endpoint the supervisor's SUB really bound

    def endpoint(self, name: str) -> str:
        """Where a socket named `name` binds: `ipc://` in the run dir, or `tcp://HOST:0`."""
        return self.transport.bind_endpoint(self.run_dir, name)

    @property
    def telemetry_endpoint(self) -> str:
        """The supervisor's SUB socket, which every daemon's telemetry connects to."""
        return self.telemetry or self.endpoint("telemetry")


@dataclass(frozen=True)
class PlacedRole:
    """One role of a checked run on its devices: what a daemon launch is built from."""

    role: str  # "target" or "draft"
    model: str  # the model folder
    devices: tuple[Device, ...]  # all of one backend; the draft has one
    trust_remote_code: bool = False
    cpu_threads: int | None = None  # the run's share of a CPU other daemons use too; None: all


@dataclass(frozen=True)
class DaemonLaunch:
    """Everything one daemon process needs, complete: `Supervisor.start` runs it as it is.

    The endpoints are the spec's: `control_endpoint` (the daemon's ROUTER),
    `telemetry_endpoint` (the supervisor's SUB), `draft_endpoint` (a split target's draft).
    """

    spec: DaemonSpec  # written as JSON to spec_path, read by the daemon
    argv: tuple[str, ...]  # argv[0] is the interpreter
    env: Mapping[str, str] = field(repr=False)  # the child's whole environment
    spec_path: Path
    log_path: Path  # the daemon's stdout and stderr
    cwd: Path
    keys: PartyKeys | None = field(default=None, repr=False)  # tcp: handed over on its stdin

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def python(self) -> str:
        """The interpreter: the backend's `[backends.X] python`, else specdeck's own."""
        return self.argv[0]


def daemon_launch(
    placed: PlacedRole,
    site: LaunchSite,
    *,
    run_id: str,
    backend_python: Mapping[str, str],
    config_path: str = "",
    local_draft: PlacedRole | None = None,
    draft_endpoint: str = "",
    bind_host: str | None = None,
) -> DaemonLaunch:
    """The launch of one placed role under a supervisor's site.

    A target gets `local_draft` (in-process: the draft loads beside it, on one of its
    devices) or `draft_endpoint` (split: the draft daemon's control socket, as bound), not
    both. Over tcp the daemon binds on `bind_host` (default: the site's host), port 0.
    Build it on the thread that starts it: the kernel's parent-death signal follows that thread.
    """
    if local_draft is not None and draft_endpoint:
        raise ValueError("a target loads its draft beside it or reaches a draft daemon, not both")
    devices = placed.devices
    backend = process_backend(devices)  # mixed backends raise ValueError
    names = torch_devices(devices)
    beside: dict = {}
    if local_draft is not None:
        if len(local_draft.devices) != 1 or local_draft.devices[0] not in devices:
            raise ValueError("an in-process draft goes on one of the target's devices")
        beside = {
            "draft_model": _absolute(local_draft.model),
            "draft_torch_devices": (names[devices.index(local_draft.devices[0])],),
            "draft_trust_remote_code": local_draft.trust_remote_code,
        }
    spec = DaemonSpec(
        role=placed.role,
        run_id=run_id,
        model=_absolute(placed.model),
        device_ids=tuple(d.id for d in devices),
        torch_devices=tuple(names),
        backend=devices[0].backend,
        simulated=any(d.simulated for d in devices),
        control_endpoint=_control_endpoint(site, placed.role, bind_host),
        telemetry_endpoint=site.telemetry_endpoint,
        parent_pid=os.getpid(),
        pdeathsig=threading.current_thread() is threading.main_thread(),
        trust_remote_code=placed.trust_remote_code,
        config_path=config_path,
        heartbeat_s=site.heartbeat_s,
        draft_endpoint=draft_endpoint,
        transport=site.transport.kind,
        **beside,
    )
    spec_path = site.run_dir / f"{placed.role}.json"
    python = backend_python.get(backend) or sys.executable
    paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        **visibility_env(devices),
        **_thread_budget(placed.cpu_threads),
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PYTHONUNBUFFERED": "1",
    }
    return DaemonLaunch(
        spec=spec,
        argv=(python, "-m", "app.cli", "daemon", "--role", placed.role, "--spec", str(spec_path)),
        env=MappingProxyType(env),
        spec_path=spec_path,
        log_path=site.log_dir / f"{placed.role}.log",
        cwd=site.run_dir,
        keys=site.keys.party(placed.role) if site.transport.is_tcp and site.keys else None,
    )


def _thread_budget(threads: int | None) -> dict[str, str]:
    """The OpenMP and MKL thread counts of a daemon that shares the CPU, unless set by the user.

    Two daemons of a run on one CPU each start a pool as wide as the machine; a pool spinning
    after its step takes cores from the other's (split ran at a third of in-process on 16
    cores, docs/validation.md).
    """
    if threads is None or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def spawn(launch: DaemonLaunch) -> subprocess.Popen:
    """Start a launch as it is: spec written, output to its log, its keys (tcp) on its stdin."""
    if launch.spec.transport == "tcp" and launch.keys is None:
        raise ValueError(f"the {launch.role} daemon's tcp launch holds no keys")
    launch.spec.save(launch.spec_path)
    with open(launch.log_path, "ab") as log:
        # a session of its own: Ctrl-C in the terminal reaches specdeck, which stops it
        popen = subprocess.Popen(
            list(launch.argv),
            env=dict(launch.env),
            stdin=subprocess.DEVNULL if launch.keys is None else subprocess.PIPE,
            stdout=log,
            stderr=log,
            cwd=str(launch.cwd),
            start_new_session=True,
        )
    if launch.keys is not None:
        try:  # a pipe: the secret key is never on disk, in argv or in the environment
            popen.stdin.write(launch.keys.to_line())
            popen.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; its exit status tells the supervisor
    return popen


def _control_endpoint(site: LaunchSite, role: str, bind_host: str | None) -> str:
    if bind_host is None or not site.transport.is_tcp:
        return site.endpoint(f"{role}-control")
    return Transport("tcp", bind_host).bind_endpoint(site.run_dir, f"{role}-control")


def _absolute(model: str) -> str:
    """A model folder as an absolute path (daemons run in the run dir); a name stays as is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model
