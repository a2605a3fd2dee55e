"""Daemons on other hosts of a Ray cluster: each started by an actor pinned to its node.

The actor (`DaemonHost`) owns the daemon process: it starts it from the run's launch value
(interpreter, device visibility by UUID, endpoints), made right for its node (its own run
dir, Python and environment), and the daemon ends when the actor does (the daemon watches
its parent). GPUs are taken from Ray's accounting while a daemon holds them, and each card
a run places a role on is claimed by name in Ray (a named actor that lives as long as the
run's), so a second run on that card is refused at once instead of sharing it unawares. On
the supervisor's side a `RemoteProcess` stands where a `subprocess.Popen` would. No torch;
Ray only through `backends.cluster.import_ray`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from backends.cluster import ClusterBackend, import_ray
from backends.visibility import NO_GPU_ENV
from ipc.launch import PROJECT_ROOT, DaemonLaunch, PlacedRole, spawn
from ipc.transport import PartyKeys, Transport

if TYPE_CHECKING:
    from backends.discovery import Inventory
    from ipc.run_spec import CheckedRun

PLACE_TIMEOUT_S = 60.0  # a node's worker starting cold; past it, the GPUs are taken
LOST_STATUS = -9  # the exit status a daemon on a host that left is given
HOST_PING_S = 0.1
HOST_SILENCE_S = 1.0  # a node whose actor and daemon say nothing this long has gone
VISIBILITY_KEYS = frozenset({*NO_GPU_ENV, "CUDA_DEVICE_ORDER"})
CLAIMS_NAMESPACE = "specdeck"  # where the cards' claims are named, the same for every run
CARD_BACKENDS = ("cuda", "hip")  # devices one run holds (a CPU is shared)


def claim_name(device_id: str) -> str:
    """The name in Ray of the claim on one card (`HOST/cuda:0`): one run holds it at a time."""
    return f"specdeck-card:{device_id}"


class CardClaim:
    """Holds a card's name for a run (a role's second and later cards; its first is held by
    the role's `DaemonHost`): ended with the run, or with the process that made it."""


class DaemonHost:
    """On one node: starts one daemon from its launch, reports its exit, gives its log back."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen | None = None
        self.run_dir = Path(tempfile.mkdtemp(prefix="specdeck-node-"))  # 0700
        self.log_path: Path | None = None
        self.exited = threading.Event()

    def where(self) -> tuple[str, str]:
        """(host name, the address this node's sockets bind on)."""
        import ray

        return socket.gethostname(), ray.util.get_node_ip_address()

    def start(self, launch: DaemonLaunch, keys_line: bytes | None, home_python: str) -> int:
        """Start the daemon as `launch` says, made for this node, its keys (tcp) handed over
        on its stdin; its pid here."""
        here = for_this_node(launch, self.run_dir, home_python)
        if keys_line is not None:
            here = replace(here, keys=PartyKeys.from_line(keys_line))
        self.log_path = here.log_path
        self.popen = spawn(here)
        threading.Thread(target=self._reap, daemon=True).start()
        return self.popen.pid

    def _reap(self) -> None:
        self.popen.wait()
        self.exited.set()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The daemon's exit status once it has ended (None while it runs after `timeout_s`)."""
        self.exited.wait(timeout_s)
        return self.popen.poll() if self.popen is not None else None

    def signal(self, how: str) -> None:
        """`terminate` or `kill` the daemon."""
        if self.popen is not None and self.popen.poll() is None:
            getattr(self.popen, how)()

    def finish(self) -> str:
        """The daemon's output, once it has ended; this node's run dir goes with it."""
        text = ""
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                text = self.log_path.read_text(encoding="utf-8", errors="replace")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return text


def for_this_node(launch: DaemonLaunch, run_dir: Path, home_python: str) -> DaemonLaunch:
    """`launch` made right for the node it runs on: the spec, log and working directory in
    this node's run dir, this node's environment with the launch's device visibility, this
    node's Python where the launch used specdeck's own, and this process as the parent."""
    python = sys.executable if launch.python == home_python else launch.python
    paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        **{k: v for k, v in launch.env.items() if k in VISIBILITY_KEYS},
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PYTHONUNBUFFERED": "1",
    }
    spec_path = run_dir / launch.spec_path.name
    return replace(
        launch,
        spec=replace(launch.spec, parent_pid=os.getpid(), pdeathsig=False),
        argv=(python, *launch.argv[1:-1], str(spec_path)),
        env=MappingProxyType(env),
        spec_path=spec_path,
        log_path=run_dir / launch.log_path.name,
        cwd=run_dir,
    )


class RemoteProcess:
    """A daemon on another node, as the supervisor holds a `subprocess.Popen`."""

    def __init__(self, ray: Any, actor: Any, pid: int, host: str, log_copy: Path) -> None:
        self._ray = ray
        self._actor = actor
        self.pid = pid
        self.host = host
        self.log_copy = log_copy  # the record's copy of the daemon's log
        self.returncode: int | None = None
        self.host_lost = False  # its node died or left the cluster
        self.heard: Callable[[], float] = time.monotonic  # when its daemon last said a word
        self._exit = actor.wait.remote()
        self._closed = threading.Event()
        self._watch = threading.Thread(target=self._watch_host, name=f"host-{host}", daemon=True)
        self._watch.start()

    def close(self) -> None:
        """Stop asking its host for signs of life (before Ray is shut down: an actor call
        after `ray.shutdown()` ends this whole process, from Ray's core)."""
        self._closed.set()
        self._watch.join(timeout=10.0)  # a round is a ping of 0.1 s at most

    def _watch_host(self) -> None:
        """Ask the actor for a sign of life a few times a second: Ray itself takes ~15 s to
        declare a node dead, and a run must end within 3 s, naming the host. The host has
        gone when neither its actor nor its daemon (`heard`) has said a word for
        HOST_SILENCE_S: one busy moment of either is no death."""
        while self._watching():
            asked = time.monotonic()
            ping = self._actor.where.remote()
            while not self._ray.wait([ping], timeout=HOST_PING_S)[0]:
                now = time.monotonic()
                if now - asked >= HOST_SILENCE_S and now - self.heard() >= HOST_SILENCE_S:
                    self.host_lost = True
                    return
                if not self._watching():
                    return
            self._closed.wait(HOST_PING_S)

    def _watching(self) -> bool:
        """Whether the host is still to be watched: the daemon is running, this process is
        not closed, and Ray is up (an actor call after shutdown would end the process)."""
        return self.returncode is None and not self._closed.is_set() and self._ray.is_initialized()

    def poll(self) -> int | None:
        """The exit status once the daemon has ended or its host has gone, else None."""
        if self.returncode is not None:
            return self.returncode
        ready, _ = self._ray.wait([self._exit], timeout=0)
        if ready:
            self._take(ready[0])
        elif self.host_lost:
            self._lose()
        return self.returncode

    def _lose(self) -> None:
        self.returncode = LOST_STATUS
        self._fetch_log()
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor)

    def _take(self, ref: Any) -> None:
        try:
            status = self._ray.get(ref)
        except Exception:  # the actor died with its node: the daemon has gone with it
            self.host_lost = True
            self._lose()
            return
        self.returncode = status
        self._fetch_log()
        self._ray.kill(self._actor)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the daemon's end (subprocess.TimeoutExpired after `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"daemon on {self.host}", timeout or 0)
            self._ray.wait(
                [self._exit], timeout=HOST_PING_S if left is None else min(left, HOST_PING_S)
            )
        return self.returncode  # type: ignore[return-value]

    def terminate(self) -> None:
        self._actor.signal.remote("terminate")

    def kill(self) -> None:
        self._actor.signal.remote("kill")

    def _fetch_log(self) -> None:
        """Bring the daemon's log into the record (or say why it could not come)."""
        if self.host_lost:
            text = f"[specdeck] host {self.host} left the cluster; the daemon's log there is lost\n"
        else:
            try:
                there = self._ray.get(self._actor.finish.remote(), timeout=10)
                text = f"[specdeck] the daemon's log on {self.host} (pid {self.pid}):\n{there}"
            except Exception as exc:
                text = f"[specdeck] the daemon's log on {self.host} could not be fetched: {exc}\n"
        try:
            with open(self.log_copy, "a", encoding="utf-8") as copy:
                copy.write(text)
        except OSError:
            pass  # a full disk: the run's end says so through the record


@dataclass(frozen=True)
class NodeSite:
    """Where one placed role of a cluster run goes: its node, host and bind address."""

    node_id: str
    host: str
    actor: Any
    bind_host: str
    gpus: int


class ClusterSites:
    """The nodes a run's roles go to: one `DaemonHost` per remote role, made before launch."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._sites: dict[str, NodeSite] = {}
        self._claims: dict[str, Any] = {}  # card id -> the actor holding its name, this run's
        self._processes: list[RemoteProcess] = []  # the daemons started on nodes
        self._ray: Any = None

    @classmethod
    def of(cls, run: CheckedRun, inventory: Inventory) -> ClusterSites | None:
        """The sites of a run with a role on a cluster's host, else None (all runs here)."""
        if not any(d.host for d in run.devices.values()):
            return None
        return cls(inventory)

    def transport(self) -> Transport:
        """tcp (with CURVE) bound on the address the nodes reach this process at."""
        ray = self._ray = self._ray or import_ray()
        return Transport("tcp", ray.util.get_node_ip_address())

    def place_all(self, roles: list[PlacedRole]) -> None:
        """`place` each role that sits on a cluster's host."""
        for placed in roles:
            if any(d.host for d in placed.devices):
                self.place(placed)

    def place(self, placed: PlacedRole) -> NodeSite:
        """Start the actor that will own this role's daemon on its node, its GPUs taken from
        Ray's accounting and its cards claimed for this run; ValueError (one line) when its
        node cannot take it or another run holds one of its cards."""
        ray = self._ray = self._ray or import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        device = placed.devices[0]
        owner = self._inventory.owners.get(device.id)
        if not isinstance(owner, ClusterBackend):
            raise ValueError(f"{device.id} is on no node of the joined cluster")
        node_id = owner.node_of(device)
        on_node = NodeAffinitySchedulingStrategy(node_id, soft=False)
        gpus = sum(1 for d in placed.devices if d.backend in CARD_BACKENDS and not d.simulated)
        # cards this run does not hold yet (its other role may share one, as on one machine)
        cards = [
            d.id for d in placed.devices if d.backend in CARD_BACKENDS and d.id not in self._claims
        ]
        actor = self._actor(
            DaemonHost,
            cards[0] if cards else None,
            num_cpus=0,
            num_gpus=gpus,
            max_concurrency=4,  # wait() blocks while signal() and log() still answer
            max_restarts=0,
            scheduling_strategy=on_node,
        )
        for card in cards[1:]:
            try:
                self._actor(CardClaim, card, num_cpus=0, scheduling_strategy=on_node)
            except ValueError:
                ray.kill(actor)  # the claims made so far go with the run's close()
                raise
        try:
            _, bind_host = ray.get(actor.where.remote(), timeout=PLACE_TIMEOUT_S)
        except Exception:
            ray.kill(actor)
            raise ValueError(
                f"the {placed.role} could not be placed on {device.host} within "
                f"{PLACE_TIMEOUT_S:g} s: Ray counts {gpus} of its GPUs as taken by another run, "
                "or the node is not answering"
            ) from None
        site = NodeSite(node_id, device.host or "", actor, bind_host, gpus)
        self._sites[placed.role] = site
        return site

    def _actor(self, actor_class: type, card: str | None, **options: Any) -> Any:
        """An actor of `actor_class` with Ray's `options`, named after `card` when given and
        kept as this run's claim on it; ValueError naming the card when another run holds
        its name."""
        named = {"name": claim_name(card), "namespace": CLAIMS_NAMESPACE} if card else {}
        try:
            actor = self._ray.remote(actor_class).options(**options, **named).remote()
        except ValueError as exc:
            if card is None or "already taken" not in str(exc):
                raise
            raise ValueError(
                f"{card} is in use by another specdeck run on the cluster: "
                "wait for it to end or pick another card"
            ) from None
        if card is not None:
            self._claims[card] = actor
        return actor

    def bind_host(self, role: str) -> str | None:
        """The address a role's daemon binds on: its node's (None: it runs here)."""
        site = self._sites.get(role)
        return site.bind_host if site is not None else None

    def spawner(self, role: str) -> Callable[[DaemonLaunch], Any] | None:
        """What `Supervisor.start` starts this role's launch with: its node's actor (None:
        the role runs here, started as any local daemon)."""
        site = self._sites.get(role)
        if site is None:
            return None
        ray = self._ray

        def start_there(launch: DaemonLaunch) -> RemoteProcess:
            # what Ray pickles: plain values (the keys as their one line, never on a disk)
            sent = replace(launch, env=dict(launch.env), keys=None)
            line = launch.keys.to_line() if launch.keys is not None else None
            pid = ray.get(site.actor.start.remote(sent, line, sys.executable), timeout=60)
            process = RemoteProcess(ray, site.actor, pid, site.host, launch.log_path)
            self._processes.append(process)
            return process

        return start_there

    def close(self) -> None:
        """End every actor (and with it any daemon still running, and the cards' claims)."""
        for process in self._processes:  # no thread of this run calls Ray after this
            process.close()
        self._processes.clear()
        actors = [site.actor for site in self._sites.values()] + list(self._claims.values())
        for actor in {id(a): a for a in actors}.values():  # a host holding a card: once
            with contextlib.suppress(Exception):  # its node is gone already
                self._ray.kill(actor)
        self._sites.clear()
        self._claims.clear()


def host_of(process: Any) -> str:
    """` on HOST` for a daemon on a cluster node, else nothing."""
    host = getattr(process, "host", None)
    return f" on {host}" if host else ""


def lost_text(role: str, process: Any) -> str | None:
    """Why a daemon ended, when its host left the cluster; None otherwise."""
    if not getattr(process, "host_lost", False):
        return None
    return (
        f"host {process.host} left the cluster: the {role} daemon (pid {process.pid}) went with it"
    )
