"""Prometheus `/metrics` of this machine's devices and of the runs a process follows.

The collectors read what is already kept — each device's latest reading from the sampler and
each run's figures gathered from its events — so a scrape never polls a device or waits on a
run. Names follow Prometheus' conventions: the `specdeck_` prefix, `_total` on counters, base
units (bytes, watts, celsius, seconds, a 0..1 ratio for utilization). A metric a device does not
report is left out for that device, never exported as 0. No torch here, nor Textual.
"""

from __future__ import annotations

import bisect
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ipc import events as ev
from ipc.run_spec import AUTO_K_MOST, K_LIMIT

if TYPE_CHECKING:
    from backends.base import Device, Sample
    from backends.discovery import Inventory
    from ipc.run_spec import CheckedRun
    from ipc.watch import LiveWatch, RunHeader

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
ROLE_NONE = "none"
DEVICE_LABELS = ("device", "backend", "name", "simulated", "role")
RUN_LABELS = ("run_id", "target_model", "draft_model", "placement", "mode")
# a run's phase, one 0/1 series each; "baseline" is the target-only decoding of --baseline
RUN_PHASES = (
    "starting", "loading", "capture", "prefill", "decode", "baseline", "done", "stopped", "failed"
)  # fmt: skip
RUN_OVER = ("done", "stopped", "failed")
FINISHED_KEEP_S = 300.0  # a watched run's last figures stay this long: scrapes see its end
RUN_SAMPLE_S = 0.5  # `run --metrics-port` samples as often as a run's own sampler would
WATCH_POLL_S = 0.5  # how often a run's reader looks up from its feed (to notice a close)
# acceptance length is a whole number from 1 to k + 1: a bucket per value up to auto k's
# largest step, then coarser ones up to the largest k a run may ask for
ACCEPTANCE_LENGTH_BUCKETS = (*range(1, AUTO_K_MOST + 2), 24, 32, 48, K_LIMIT + 1)


class DeviceReadings(Protocol):
    """Where device readings come from (`backends.sampler.DeviceSampler` fills it in)."""

    @property
    def inventory(self) -> _Devices: ...

    def latest(self, device_id: str) -> Sample | None:
        """The newest reading of a device, or None before its first."""
        ...


class _Devices(Protocol):
    devices: tuple[Device, ...]


class MetricsPortError(Exception):
    """`/metrics` cannot be served on the address asked for; one line for the user (exit 2)."""


@dataclass(frozen=True)
class RunLabels:
    """What tells one run's series apart: its id, models, placement and mode."""

    run_id: str
    target_model: str
    draft_model: str
    target: tuple[str, ...]
    draft: str
    mode: str

    @classmethod
    def of_checked(cls, run: CheckedRun, run_id: str) -> RunLabels:
        """The labels of a checked run, its models named as its record names them."""
        placement = run.placement
        return cls(
            run_id,
            run.target_name,
            run.draft_name,
            tuple(placement.target),
            placement.draft,
            run.mode,
        )

    @classmethod
    def of_header(cls, header: RunHeader) -> RunLabels:
        """The labels of a run watched from another process."""
        placement = header.placement
        return cls(
            header.run_id,
            header.target_model,
            header.draft_model,
            tuple(placement["target"]),
            placement["draft"],
            header.mode,
        )

    @property
    def placement(self) -> str:
        """`target=cuda:0,cuda:1 draft=cuda:1`."""
        return f"target={','.join(self.target)} draft={self.draft}"

    def values(self) -> list[str]:
        """The label values in RUN_LABELS order."""
        return [self.run_id, self.target_model, self.draft_model, self.placement, self.mode]

    def roles(self) -> dict[str, tuple[str, ...]]:
        """device id -> the roles this run placed on it."""
        roles: dict[str, tuple[str, ...]] = {d: ("target",) for d in self.target}
        roles[self.draft] = (*roles.get(self.draft, ()), "draft")
        return roles


@dataclass(frozen=True)
class RunFigures:
    """One run's figures at one moment, as a scrape exports them."""

    tokens: int = 0  # new tokens of the speculative generations (the prefill's first included)
    steps: int = 0
    accepted_tokens: int = 0
    drafted_tokens: int = 0
    prompts: int = 0  # prompts of a session finished
    acceptance_length_counts: tuple[int, ...] = (0,) * (len(ACCEPTANCE_LENGTH_BUCKETS) + 1)
    acceptance_length_sum: int = 0
    decode_tokens_per_s: float | None = None
    phase: str = "starting"

    @property
    def live(self) -> bool:
        """Whether the run is still going on (its devices still carry its roles)."""
        return self.phase not in RUN_OVER

    def acceptance_length_buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last, as a histogram exports them."""
        bounds = [str(float(b)) for b in ACCEPTANCE_LENGTH_BUCKETS] + ["+Inf"]
        pairs, total = [], 0
        for bound, count in zip(bounds, self.acceptance_length_counts, strict=True):
            total += count
            pairs.append((bound, float(total)))
        return pairs


class RunMetrics:
    """One run's figures, kept up to date from its events (called from any thread)."""

    def __init__(self, labels: RunLabels | None = None) -> None:
        self.labels = labels  # None until the run has an id: not exported before
        self._figures = RunFigures()
        self._generation_tokens = 0  # new tokens of the generation going on, as last reported
        self._lock = threading.Lock()

    def name(self, labels: RunLabels) -> None:
        """Give the run its labels (its id is known once it has started)."""
        self.labels = labels

    def figures(self) -> RunFigures:
        """The figures now (a whole, consistent value: each event makes a new one)."""
        return self._figures

    def observe(self, event: object) -> None:
        """Take in one run event (`ipc.events`); anything else is ignored."""
        with self._lock:
            match event:
                case ev.StepEvent():
                    self._step(event)
                case ev.StatusEvent(role=role, state=state, text=text):
                    self._status(role, state, text)
                case ev.TokenEvent(phase="baseline"):
                    self._set(phase="baseline")
                case ev.PromptEvent():
                    self._set(prompts=self._figures.prompts + 1)

    def _set(self, **changes: object) -> None:
        self._figures = replace(self._figures, **changes)

    def _step(self, event: ev.StepEvent) -> None:
        step, was = event.step, self._figures
        new_tokens = max(event.new_tokens, self._generation_tokens + step.committed)
        counts = list(was.acceptance_length_counts)
        counts[bisect.bisect_left(ACCEPTANCE_LENGTH_BUCKETS, step.committed)] += 1
        self._set(
            tokens=was.tokens + new_tokens - self._generation_tokens,
            steps=was.steps + 1,
            accepted_tokens=was.accepted_tokens + step.accepted,
            drafted_tokens=was.drafted_tokens + step.drafted,
            acceptance_length_counts=tuple(counts),
            acceptance_length_sum=was.acceptance_length_sum + step.committed,
            decode_tokens_per_s=event.decode_tokens_per_s,
            phase="decode",
        )
        self._generation_tokens = new_tokens

    def _status(self, role: str, state: str, text: str) -> None:
        if role == "run":
            if state in RUN_OVER:
                self._set(phase=state)
            return
        if self._figures.phase in RUN_OVER:
            return  # a daemon's last words after the run's end change nothing
        if state == "prefill" and role == "target":
            self._generation_tokens = 0
            self._set(phase="prefill")
        elif state == "decode" and role == "target" and text.startswith("baseline"):
            self._set(phase="baseline")
        elif state == "decode" and role == "target":
            # said once the prefill chose the first token, which no step carries
            first = 1 if self._generation_tokens == 0 else 0
            self._generation_tokens += first
            self._set(phase="decode", tokens=self._figures.tokens + first)
        elif state in ("loading", "ready"):
            self._set(phase="loading")
        elif state in ("starting", "capture"):
            self._set(phase=state)


def _device_families() -> dict[str, GaugeMetricFamily]:
    gauges = (
        ("info", "1 for each device found; its labels say what it is and the role it carries"),
        ("utilization_ratio", "Share of time the device was busy, 0 to 1"),
        ("memory_used_bytes", "Device memory in use"),
        ("memory_total_bytes", "Device memory in all"),
        ("power_watts", "Power draw"),
        ("power_limit_watts", "Power limit"),
        ("temperature_celsius", "Temperature"),
    )
    return {
        name: GaugeMetricFamily(f"specdeck_device_{name}", text, labels=DEVICE_LABELS)
        for name, text in gauges
    }


class DeviceCollector(Collector):
    """Per-device gauges from the sampler's latest readings, with the role each device carries."""

    def __init__(self, readings: DeviceReadings, roles: Callable[[], Mapping[str, str]]) -> None:
        self.readings = readings
        self.roles = roles

    def describe(self) -> Iterable[Metric]:
        return _device_families().values()

    def collect(self) -> Iterable[Metric]:
        families = _device_families()
        roles = self.roles()
        for device in self.readings.inventory.devices:
            labels = [
                device.id,
                device.backend,
                device.name,
                "true" if device.simulated else "false",
                roles.get(device.id, ROLE_NONE),
            ]
            families["info"].add_metric(labels, 1)
            sample = self.readings.latest(device.id)
            if sample is None:
                continue  # not read yet: nothing to say but that it is there
            total = sample.memory_total_bytes or device.memory_total_bytes
            utilization = sample.utilization_percent
            readings = {
                "utilization_ratio": None if utilization is None else round(utilization / 100, 6),
                "memory_used_bytes": sample.memory_used_bytes,
                "memory_total_bytes": total,
                "power_watts": sample.power_watts,
                "power_limit_watts": sample.power_limit_watts,
                "temperature_celsius": sample.temperature_c,
            }
            for name, value in readings.items():
                if value is not None:  # n/a is left out, never 0
                    families[name].add_metric(labels, value)
        return families.values()


def _run_families() -> dict[str, Metric]:
    counters = (
        ("tokens", "New tokens generated by speculative decoding"),
        ("steps", "Speculative steps (one draft proposal and one verification each)"),
        ("accepted_tokens", "Draft tokens the target accepted"),
        ("drafted_tokens", "Draft tokens proposed"),
        ("prompts", "Prompts of a session finished"),
    )
    families: dict[str, Metric] = {
        name: CounterMetricFamily(f"specdeck_run_{name}", text, labels=RUN_LABELS)
        for name, text in counters
    }
    families["acceptance_length"] = HistogramMetricFamily(
        "specdeck_run_acceptance_length",
        "Tokens committed per step, the target's own token included",
        labels=RUN_LABELS,
    )
    families["decode_tokens_per_second"] = GaugeMetricFamily(
        "specdeck_run_decode_tokens_per_second",
        "Decode throughput of the prompt going on (prefill excluded)",
        labels=RUN_LABELS,
    )
    families["phase"] = GaugeMetricFamily(
        "specdeck_run_phase",
        "1 for the phase the run is in, 0 for the others",
        labels=(*RUN_LABELS, "phase"),
    )
    return families


class RunCollector(Collector):
    """Per-run counters, the acceptance-length histogram and gauges of the runs followed."""

    def __init__(self, runs: Callable[[], Iterable[RunMetrics]]) -> None:
        self.runs = runs

    def describe(self) -> Iterable[Metric]:
        return _run_families().values()

    def collect(self) -> Iterable[Metric]:
        families = _run_families()
        for run in self.runs():
            if run.labels is None:
                continue
            labels, figures = run.labels.values(), run.figures()
            families["tokens"].add_metric(labels, figures.tokens)
            families["steps"].add_metric(labels, figures.steps)
            families["accepted_tokens"].add_metric(labels, figures.accepted_tokens)
            families["drafted_tokens"].add_metric(labels, figures.drafted_tokens)
            families["prompts"].add_metric(labels, figures.prompts)
            families["acceptance_length"].add_metric(
                labels, figures.acceptance_length_buckets(), float(figures.acceptance_length_sum)
            )
            if figures.decode_tokens_per_s is not None:
                families["decode_tokens_per_second"].add_metric(labels, figures.decode_tokens_per_s)
            for phase in RUN_PHASES:
                families["phase"].add_metric([*labels, phase], float(phase == figures.phase))
        return families.values()


def device_roles(runs: Iterable[RunMetrics]) -> dict[str, str]:
    """device id -> the roles live runs placed on it (`target`, `draft`, `target+draft`)."""
    placed: dict[str, set[str]] = {}
    for run in runs:
        if run.labels is not None and run.figures().live:
            for device_id, roles in run.labels.roles().items():
                placed.setdefault(device_id, set()).update(roles)
    order = ("target", "draft")
    return {d: "+".join(r for r in order if r in roles) for d, roles in placed.items()}


@dataclass(frozen=True)
class MetricsServer:
    """A running `/metrics` HTTP server."""

    host: str
    port: int
    _server: object = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]
        self._thread.join(5.0)


class MetricsExporter:
    """One process's `/metrics`: the devices it reads and the runs it follows."""

    def __init__(self, readings: DeviceReadings) -> None:
        self._runs: dict[int, RunMetrics] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(DeviceCollector(readings, lambda: device_roles(self.runs())))
        self.registry.register(RunCollector(self.runs))
        self.server: MetricsServer | None = None

    def runs(self) -> list[RunMetrics]:
        """The runs followed now."""
        with self._lock:
            return list(self._runs.values())

    def add(self, run: RunMetrics) -> RunMetrics:
        """Export this run's figures from now on."""
        with self._lock:
            self._runs[id(run)] = run
        return run

    def drop(self, run: RunMetrics) -> None:
        """Stop exporting this run."""
        with self._lock:
            self._runs.pop(id(run), None)

    def follow_run(self, run: CheckedRun, run_id: str) -> Callable[[object], None]:
        """Export this process's new run in place of its last one; returns the callback for
        the run's events. (The dashboard runs one at a time; the last stays until the next.)"""
        metrics = RunMetrics(RunLabels.of_checked(run, run_id))
        with self._lock:
            self._runs = {id(metrics): metrics}
        return metrics.observe

    def serve(self, host: str, port: int, *, option: str = "--port") -> MetricsServer:
        """Serve `/metrics` on a thread; a busy or forbidden address raises MetricsPortError
        whose one line names `option`."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(_listen_problem(exc, host, port, option)) from None
        self.server = MetricsServer(host, server.server_address[1], server, thread)
        return self.server

    def close(self) -> None:
        """Stop serving, if serving."""
        if self.server is not None:
            self.server.close()
            self.server = None


class RunMetricsServer:
    """`specdeck run --metrics-port`: `/metrics` of the run's process — its devices, read by a
    sampler the run records from too, and its run, fed from the run's events."""

    def __init__(self, inventory: Inventory, port: int, host: str = LOCALHOST) -> None:
        from backends.sampler import DeviceSampler

        self.sampler = DeviceSampler(inventory, interval_s=RUN_SAMPLE_S)
        self.exporter = MetricsExporter(self.sampler)
        self.run = self.exporter.add(RunMetrics())
        self.server = self.exporter.serve(host, port, option="--metrics-port")  # busy: raises
        self.sampler.start()

    def relay(self, on_event: Callable[[ev.RunEvent], None]) -> Callable[[ev.RunEvent], None]:
        """A run's event callback that counts each event, then hands it to `on_event`."""

        def both(event: ev.RunEvent) -> None:
            self.run.observe(event)
            on_event(event)

        return both

    def started(self, run: CheckedRun, run_id: str) -> None:
        """The run has its id: its series appear from now on."""
        self.run.name(RunLabels.of_checked(run, run_id))

    def close(self) -> None:
        """Stop serving and sampling."""
        self.exporter.close()
        self.sampler.stop()


class WatchedRuns:
    """The live runs of this host, each followed through its watch endpoint (`ipc.watch`) on
    a thread of its own and exported while it goes on and for `keep_s` after its end."""

    def __init__(
        self, exporter: MetricsExporter, data_dir: Path | None, *, keep_s: float = FINISHED_KEEP_S
    ) -> None:
        self.exporter = exporter
        self.data_dir = data_dir
        self.keep_s = keep_s
        self._followed: set[str] = set()  # run ids followed so far (a run is read once)
        self._ended: dict[int, tuple[RunMetrics, float]] = {}  # finished: since when
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def scan(self) -> None:
        """Follow the runs that began since the last scan; stop exporting long-finished ones."""
        from ipc.watch import live_runs

        live = live_runs(self.data_dir)
        for run in live:
            if run.run_id not in self._followed:
                threading.Thread(
                    target=self._follow, args=(run,), name=f"watch-{run.run_id}", daemon=True
                ).start()
        self._followed = {run.run_id for run in live}  # a run is read once, while it lives
        now = time.monotonic()
        with self._lock:
            for key, (run, ended) in list(self._ended.items()):
                if now - ended >= self.keep_s:
                    self.exporter.drop(run)
                    del self._ended[key]

    def close(self) -> None:
        """Stop following (the runs go on)."""
        self._closing.set()

    def _follow(self, live: LiveWatch) -> None:
        from ipc.watch import WatchError, WatchFeed

        run = None
        try:
            with WatchFeed(live) as feed:
                run = self.exporter.add(RunMetrics(RunLabels.of_header(feed.hello())))
                while not feed.ended and not self._closing.is_set():
                    item = feed.next(WATCH_POLL_S)
                    if item is not None:
                        run.observe(item)
        except WatchError as exc:  # it ended before it answered
            log.info("cannot watch run %s: %s", live.run_id, exc)
        except Exception:  # one unreadable run must not stop the exporter
            log.exception("watching run %s failed", live.run_id)
        finally:
            if run is not None:  # its last figures stay a while, then go
                with self._lock:
                    self._ended[id(run)] = (run, time.monotonic())


def _listen_problem(exc: OSError, host: str, port: int, option: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{option} {port}: the port is in use on {host} (another exporter?)"
    if exc.errno == errno.EACCES:
        return f"{option} {port}: not allowed to listen on it (ports below 1024 need root)"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine"
    return f"{option} {port}: cannot listen on {host}: {exc.strerror or exc}"
