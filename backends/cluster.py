"""Every node of a Ray cluster as one backend: each node's devices found and read on that node.

A small actor per live node (no GPU, pinned to its node) runs specdeck's own discovery and
telemetry there; `ClusterBackend` gathers their reports, names each device `HOST/ID` and
follows nodes that join or leave. Ray is imported only by `import_ray`, called by whoever was
given a cluster address (`specdeck --cluster`), never at import.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendUnavailable, Device, DeviceGone, Sample

log = logging.getLogger(__name__)

SIMULATE_LABEL = (
    "specdeck.simulate"  # a node label: `ray start --labels='{"specdeck.simulate": "cuda:2"}'`
)
SIMULATE_ENV = "SPECDECK_SIMULATE"  # or this variable in the environment of that node's `ray start`
NAMESPACE = "specdeck"
REPORT_TIMEOUT_S = 2.0  # a node that has not reported for this long shows no readings
# amdsmi's pip package raises KeyError, not ImportError, on a machine without ROCm's library;
# Ray only survives ImportError, so its processes get this stand-in on their PYTHONPATH
_AMDSMI_STAND_IN = Path(__file__).resolve().parent / "amdsmi_absent"


class ClusterUnavailable(Exception):
    """Ray missing, or a cluster that cannot be joined; the message is one line for the user."""


def amdsmi_breaks_imports() -> bool:
    """Whether `import amdsmi` fails with something other than ImportError (ROCm's library
    missing), which would take `import ray` down with it."""
    if "amdsmi" in sys.modules:
        return sys.modules["amdsmi"] is None and str(_AMDSMI_STAND_IN) in os.environ.get(
            "PYTHONPATH", ""
        )
    try:  # its failed library search prints to stdout, where `devices --json` writes
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import amdsmi  # noqa: F401
    except ImportError:
        return False
    except Exception:
        return True
    return False


def guard_ray_from_amdsmi() -> None:
    """Make a broken amdsmi an ImportError, here and in every process started from here (Ray's
    nodes and workers), so that Ray sees a machine without AMD GPUs."""
    if not amdsmi_breaks_imports():
        return
    sys.modules["amdsmi"] = None  # type: ignore[assignment]
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_AMDSMI_STAND_IN) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(_AMDSMI_STAND_IN), *paths])


def import_ray() -> Any:
    """The `ray` module; ClusterUnavailable with the install hint when it is not installed."""
    guard_ray_from_amdsmi()
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable("--cluster needs Ray: pip install 'specdeck[cluster]'") from None
    return ray


def address_problem(address: str, timeout_s: float = 3.0) -> str | None:
    """Why nothing that could be a Ray cluster answers at `HOST:PORT`, or None (Ray itself
    retries a dead address for minutes)."""
    if address.strip() == "auto" or address.startswith("ray://"):
        return None  # Ray's own: the cluster this machine is a node of; Ray Client
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{address!r} is no cluster address: expected HOST:PORT, e.g. 10.0.0.5:6379"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return f"nothing answers at {address}: {exc.strerror or exc}"
    return None


def join(address: str) -> Any:
    """Join the Ray cluster at `address` as a client (once per process); the `ray` module."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray
    problem = address_problem(address)  # before Ray's import, which takes a second or more
    if problem:
        raise ClusterUnavailable(f"cannot join the Ray cluster: {problem}") from None
    ray = import_ray()
    try:  # Ray wants real files to write to: the dashboard's sys.stdout is Textual's capture
        with (
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
            contextlib.redirect_stderr(null),
        ):
            ray.init(
                address=address,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ClusterUnavailable(f"cannot join the Ray cluster at {address}: {reason}") from None
    return ray


def node_simulate(labels: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    """The simulated devices a node was told to report: its label, else its environment."""
    return labels.get(SIMULATE_LABEL) or environ.get(SIMULATE_ENV) or None


@dataclass(frozen=True)
class NodeReport:
    """What one node's probe found and read: its devices (local ids) with one sample each."""

    hostname: str
    devices: tuple[Device, ...]
    samples: tuple[Sample | None, ...]  # one per device; None: its reading failed
    unavailable: tuple[tuple[str, str], ...]  # (backend, reason)


class NodeProbe:
    """Discovery and telemetry on one node (the body of the per-node actor)."""

    def __init__(self, simulate_label: str | None) -> None:
        from backends.discovery import discover

        simulate = node_simulate({SIMULATE_LABEL: simulate_label or ""}, os.environ)
        self.problem = ""
        try:
            self.inventory = discover(simulate)
        except Exception as exc:  # a bad label must show on the board, not kill the actor
            self.problem = f"{SIMULATE_LABEL}: {exc}"
            self.inventory = discover(None)

    def report(self) -> NodeReport:
        """This node's devices now, each with one fresh reading."""
        inventory = self.inventory = self.inventory.rescanned()
        samples: list[Sample | None] = []
        for device in inventory.devices:
            try:
                samples.append(inventory.sample(device))
            except Exception:  # one failing GPU must not hide the others
                samples.append(None)
        unavailable = [(u.backend, u.reason) for u in inventory.unavailable]
        if self.problem:
            unavailable.append(("simulated", self.problem))
        return NodeReport(
            socket.gethostname(), inventory.devices, tuple(samples), tuple(unavailable)
        )

    def set_phase(self, phase: str) -> None:
        """Simulated devices follow the run's phase, as local ones do."""
        self.inventory.set_phase(phase)


@dataclass
class _Node:
    node_id: str
    probe: Any  # the actor handle
    pending: Any = None  # the report asked for and not yet in
    report: NodeReport | None = None
    reported_at: float = 0.0


def unique_hosts(hostnames: Mapping[str, str]) -> dict[str, str]:
    """node id -> host name shown, a node-id suffix added where two nodes share a name."""
    seen: dict[str, int] = {}
    for name in hostnames.values():
        seen[name] = seen.get(name, 0) + 1
    return {
        node: name if seen[name] == 1 else f"{name}-{node[:6]}" for node, name in hostnames.items()
    }


class ClusterBackend(Backend):
    """The devices of every live node of the joined cluster, ids `HOST/ID`."""

    name = "cluster"

    def __init__(
        self, address: str, refresh_s: float = 0.25, timeout_s: float = REPORT_TIMEOUT_S
    ) -> None:
        self.address = address
        self._ray: Any = None  # joined by discover(), on whichever thread discovers
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._nodes: dict[str, _Node] = {}
        self._hosts: dict[str, str] = {}  # node id -> host shown
        self._devices: dict[str, tuple[str, Device]] = {}  # shown id -> (node id, local device)
        self._samples: dict[str, Sample] = {}
        self._refreshed = 0.0
        self._lock = threading.RLock()
        self._early: threading.Thread | None = None
        self._failure: BackendUnavailable | None = None
        self.unavailable: tuple[tuple[str, str], ...] = ()

    # -- the nodes -----------------------------------------------------------------------

    def _follow_nodes(self) -> None:
        """Start a probe on each node that joined; forget those that left."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"]: n for n in self._ray.nodes() if n.get("Alive")}
        for node_id in list(self._nodes):
            if node_id not in alive:
                self._forget(node_id)
        probe_class = self._ray.remote(num_cpus=0, num_gpus=0, max_restarts=0)(NodeProbe)
        for node_id, node in alive.items():
            if node_id in self._nodes:
                continue
            label = (node.get("Labels") or {}).get(SIMULATE_LABEL)
            probe = probe_class.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(label)
            self._nodes[node_id] = _Node(node_id, probe)

    def _forget(self, node_id: str) -> None:
        node = self._nodes.pop(node_id)
        with contextlib.suppress(Exception):  # its node is gone with it
            self._ray.kill(node.probe)

    def _gather(self, wait_s: float) -> None:
        """Ask every node for a report; take in those that answer within `wait_s`."""
        ray = self._ray
        for node in self._nodes.values():
            if node.pending is None:
                node.pending = node.probe.report.remote()
        by_ref = {n.pending: n for n in self._nodes.values()}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=wait_s)
        now = time.monotonic()
        for ref in ready:
            node = by_ref[ref]
            node.pending = None
            try:
                node.report, node.reported_at = ray.get(ref), now
            except Exception as exc:  # a probe that died: its node is leaving
                log.info("node %s did not report: %s", node.node_id[:8], exc)
                node.report = None

    def _rebuild(self) -> None:
        """Device ids, samples and unavailable notes from the latest reports."""
        now = time.monotonic()
        reports = {
            i: n.report
            for i, n in self._nodes.items()
            if n.report is not None and now - n.reported_at < max(self._timeout_s, 5.0)
        }
        self._hosts = unique_hosts({i: r.hostname for i, r in reports.items()})
        devices: dict[str, tuple[str, Device]] = {}
        samples: dict[str, Sample] = {}
        unavailable = []
        for node_id, report in reports.items():
            host = self._hosts[node_id]
            for device, sample in zip(report.devices, report.samples, strict=True):
                shown = replace(device, id=f"{host}/{device.id}", host=host)
                devices[shown.id] = (node_id, shown)
                if sample is not None and now - self._nodes[node_id].reported_at < self._timeout_s:
                    samples[shown.id] = replace(sample, device_id=shown.id)
            unavailable += [(f"{host}/{backend}", reason) for backend, reason in report.unavailable]
        self._devices, self._samples = devices, samples
        self.unavailable = tuple(unavailable)

    def refresh(self, wait_s: float | None = None) -> None:
        """Follow the nodes and take in their reports (waiting up to `wait_s` for them)."""
        with self._lock:
            self._follow_nodes()
            self._gather(self._timeout_s if wait_s is None else wait_s)
            self._rebuild()
            self._refreshed = time.monotonic()

    # -- Backend -------------------------------------------------------------------------

    def start_early(self) -> None:
        """Begin joining and discovering now, on a thread of its own (the dashboard: while its
        first frame is drawn); `discover()` takes what it found."""
        if self._early is None:
            self._early = threading.Thread(target=self._discover, name="cluster-join", daemon=True)
            self._early.start()

    def _discover(self) -> None:
        try:
            self._ray = join(self.address)
            self.refresh(wait_s=30.0)  # a probe's first report imports and starts its vendors
        except ClusterUnavailable as exc:
            self._failure = BackendUnavailable(str(exc))
        except Exception as exc:
            self._failure = BackendUnavailable(f"the cluster's nodes cannot be read: {exc}")

    def discover(self) -> list[Device]:
        """Every live node's devices, by node, in each node's own order."""
        if self._early is None:
            self._discover()
        else:
            self._early.join()
        if self._failure is not None:
            raise self._failure
        return self.devices()

    def devices(self) -> list[Device]:
        with self._lock:
            return [device for _, device in self._devices.values()]

    def rescan(self) -> list[Device]:
        """The devices of the nodes alive now (nodes that join or leave show at once)."""
        with self._lock:
            if time.monotonic() - self._refreshed >= self._refresh_s:
                self.refresh(wait_s=min(self._timeout_s, 0.5))
            return self.devices()

    def sample(self, device: Device) -> Sample:
        """The latest reading of a device from its node's last report."""
        with self._lock:
            if time.monotonic() - self._refreshed >= self._refresh_s:
                self.refresh(wait_s=min(self._timeout_s, 0.5))
            if device.id not in self._devices:
                raise DeviceGone(f"{device.id}: its node has left the cluster")
            found = self._samples.get(device.id)
        if found is None:
            raise RuntimeError(f"{device.id}: no reading from its node")
        return found

    def node_of(self, device: Device) -> str:
        """The Ray node id of a device of this cluster."""
        with self._lock:
            return self._devices[device.id][0]

    def set_phase(self, phase: str) -> None:
        """Every node's simulated devices follow the run's phase."""
        with self._lock:
            probes = [n.probe for n in self._nodes.values()]
        for probe in probes:
            probe.set_phase.remote(phase)

    def close(self) -> None:
        with self._lock:
            if self._ray is not None:
                for node_id in list(self._nodes):
                    self._forget(node_id)


def start_local_cluster(head: str = "cuda:2", second: str = "cuda:1") -> tuple[Any, Any]:
    """A two-node Ray cluster on this machine, for tests, benchmarks and demos: the head told
    to simulate `head` by its node label, the second node `second` by its environment.
    (the Cluster, the second node); `Cluster.shutdown()` ends it."""
    import_ray()  # the amdsmi guard first: the nodes' processes inherit it
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "labels": {SIMULATE_LABEL: head},
        },
    )
    other = nodes.add_node(num_cpus=2, env_vars={SIMULATE_ENV: second})
    nodes.wait_for_nodes()
    return nodes, other


def ray_command(argv: list[str]) -> int:
    """Ray's own command line (`ray start ...`) with the amdsmi guard: where ROCm is absent
    `ray start` itself dies on amdsmi's KeyError (docs/cluster.md)."""
    import_ray()
    from ray.scripts.scripts import main

    sys.argv = ["ray", *argv]
    try:
        main()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(ray_command(sys.argv[1:]))
