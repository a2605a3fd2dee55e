"""What a run's plots show, computed once from its record: the PNG and the terminal draw it.

Times are seconds since the record was opened (steps.jsonl's `time_s`); device samples
(devices.csv, unix seconds) are moved onto the same clock with run.json's `started_unix`.
"""

from __future__ import annotations

import math
import os
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ipc.records import find_run, load_run, placement_text, read_device_rows, read_steps

PHASES = ("load", "prefill", "decode", "idle")  # devices.csv's phase column
POINTS = 150  # at most this many points a line (a long run's steps are averaged in groups)


class NothingToPlot(LookupError):
    """A run record with no steps (it failed or was stopped before decoding); one line."""


@dataclass(frozen=True)
class Series:
    """One line of a plot: `times` in seconds, `values` (None where there is no value)."""

    times: tuple[float, ...]
    values: tuple[float | None, ...]

    def present(self) -> tuple[list[float], list[float]]:
        """(times, values) of the points that have a value."""
        pairs = [(t, v) for t, v in zip(self.times, self.values, strict=True) if v is not None]
        return [t for t, _ in pairs], [v for _, v in pairs]


@dataclass(frozen=True)
class PhaseSpan:
    """The devices were in `phase` from `start_s` to `end_s`."""

    phase: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class RunPlot:
    """Everything the plots of one run draw."""

    run_id: str
    title: str  # models, placement and mode
    throughput: Series  # decode tokens/s
    acceptance: Series  # acceptance length (tokens committed per step)
    phases: tuple[PhaseSpan, ...]
    utilization: tuple[tuple[str, Series], ...]  # (device id, utilization %) per device
    mean_acceptance_length: float | None
    decode_tokens_per_s: float | None

    @property
    def end_s(self) -> float:
        """The last time anything was recorded."""
        ends = [*self.throughput.times, *self.acceptance.times, *(p.end_s for p in self.phases)]
        ends += [t for _, series in self.utilization for t in series.times]
        return max(ends, default=0.0)


def device_ids(plots: Sequence[RunPlot]) -> list[str]:
    """The devices of one or more runs, each once, in the order the runs list them."""
    seen: dict[str, None] = {}
    for plot in plots:
        seen.update((device_id, None) for device_id, _ in plot.utilization)
    return list(seen)


def _group_size(count: int, points: int) -> int:
    """How many consecutive items one point stands for, so that at most `points` are drawn."""
    return max(1, math.ceil(count / max(1, points)))


def step_series(steps: Iterable[Mapping[str, Any]], points: int = POINTS) -> tuple[Series, Series]:
    """(decode tokens/s, acceptance length) over time, in at most `points` points.

    A point stands for a group of consecutive steps: tokens/s is the tokens they committed
    over the wall time between each and the step before it (a decoding's first step has no
    step before it and counts in neither: a workload's next prompt starts its step index
    again), acceptance length is their committed tokens per step. The steps are read once,
    into flat arrays, so a long run's record is never held as objects.
    """
    times, committed, gaps = array("d"), array("q"), array("d")  # gap: seconds since the last
    last_index, last_time = None, 0.0
    for step in steps:
        t, index = float(step["time_s"]), int(step.get("index", 0))
        times.append(t)
        committed.append(int(step["committed"]))
        gaps.append(math.nan if last_index is None or index <= last_index else t - last_time)
        last_index, last_time = index, t
    group = _group_size(len(times), points)
    at, rates, lengths = [], [], []
    for start in range(0, len(times), group):
        end = min(start + group, len(times))
        paced = [(committed[i], gaps[i]) for i in range(start, end) if gaps[i] > 0]  # nan: no
        seconds = sum(gap for _, gap in paced)
        at.append(times[end - 1])
        rates.append(sum(c for c, _ in paced) / seconds if seconds > 0 else None)
        lengths.append(sum(committed[start:end]) / (end - start))
    return Series(tuple(at), tuple(rates)), Series(tuple(at), tuple(lengths))


def device_series(
    rows: Iterable[Mapping[str, Any]], t0: float, points: int = POINTS
) -> tuple[tuple[PhaseSpan, ...], tuple[tuple[str, Series], ...]]:
    """(phases, each device's utilization %) from device samples in the order they were
    written, on the run's clock (`t0`: the record's origin); a phase lasts until the next
    begins, and utilization is averaged down to at most `points` points a device."""
    spans: list[PhaseSpan] = []
    traces: dict[str, tuple[array, array]] = {}  # device id -> (times, values; nan: none)
    for row in rows:
        t = row["time"] - t0
        if spans and spans[-1].phase == row["phase"]:
            spans[-1] = PhaseSpan(row["phase"], spans[-1].start_s, t)
        else:
            if spans:  # the previous phase lasted until this one began
                spans[-1] = PhaseSpan(spans[-1].phase, spans[-1].start_s, t)
            spans.append(PhaseSpan(row["phase"], t, t))
        times, values = traces.setdefault(row["device_id"], (array("d"), array("d")))
        times.append(t)
        value = row["utilization_percent"]
        values.append(math.nan if value is None else value)
    utilization = []
    for device_id, (times, values) in traces.items():
        group = _group_size(len(times), points)
        at, means = [], []
        for start in range(0, len(times), group):
            known = [v for v in values[start : start + group] if not math.isnan(v)]
            at.append(times[min(start + group, len(times)) - 1])
            means.append(sum(known) / len(known) if known else None)
        utilization.append((device_id, Series(tuple(at), tuple(means))))
    return tuple(spans), tuple(utilization)


def phase_line(spans: Sequence[PhaseSpan]) -> Series:
    """The phases as a step line for a text plot: the value is the phase's place in PHASES."""
    times: list[float] = []
    values: list[float | None] = []
    for span in spans:
        level = float(PHASES.index(span.phase)) if span.phase in PHASES else None
        times += [span.start_s, span.end_s]
        values += [level, level]
    return Series(tuple(times), tuple(values))


def record_origin(run: Mapping[str, Any]) -> float:
    """The unix time the record was opened: `started_unix`, else `started` (to the second)."""
    if isinstance(run.get("started_unix"), int | float):
        return float(run["started_unix"])
    return datetime.strptime(run["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp()


def run_plot(
    run: Mapping[str, Any],
    steps: Iterable[Mapping[str, Any]],
    device_rows: Iterable[Mapping[str, Any]],
    points: int = POINTS,
) -> RunPlot:
    """The plots of one run from its record: run.json, its steps and its device samples."""
    throughput, acceptance = step_series(steps, points)
    if not acceptance.times:
        raise NothingToPlot(
            f"no steps to plot in run {run['run_id']} (status {run.get('status', '?')})"
        )
    phases, utilization = device_series(device_rows, record_origin(run), points)
    summary = run.get("summary") or {}
    return RunPlot(
        run_id=run["run_id"],
        title=f"{run.get('target_model', '?')} <- {run.get('draft_model', '?')}, "
        f"{placement_text(run.get('placement', {}))} ({run.get('mode', '?')})",
        throughput=throughput,
        acceptance=acceptance,
        phases=phases,
        utilization=utilization,
        mean_acceptance_length=summary.get("mean_acceptance_length"),
        decode_tokens_per_s=summary.get("decode_tokens_per_s"),
    )


def load_plot(data_dir: str | os.PathLike, run_id: str, points: int = POINTS) -> RunPlot:
    """The plots of a recorded run (a unique prefix of its id is enough), its files read once.

    Raises `ipc.records.RunNotFound` or `NothingToPlot`, each one line for the user.
    """
    run = load_run(data_dir, run_id, steps=False)
    folder = run["folder"]
    return run_plot(run, read_steps(folder), read_device_rows(folder), points)


RECORD_FILES = ("run.json", "steps.jsonl", "devices.csv")  # what a run's plots are read from


def record_stamp(folder: str | os.PathLike) -> tuple:
    """Each of a record's plotted files' size and modification time (None where missing):
    it changes whenever the record does."""
    stamp = []
    for name in RECORD_FILES:
        try:
            st = os.stat(os.path.join(folder, name))
        except OSError:
            stamp.append(None)
        else:
            stamp.append((st.st_size, st.st_mtime_ns))
    return tuple(stamp)


class PlotCache:
    """The plots of the last few records loaded, each kept while its files are unchanged, so
    that going back to a run in the runs view draws it without reading its record again
    (a long GPU run's steps.jsonl holds tens of thousands of lines). Safe across threads."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._plots: OrderedDict[tuple[str, int], tuple[tuple, RunPlot]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, data_dir: str | os.PathLike, run_id: str, points: int = POINTS) -> RunPlot:
        """`load_plot`, from the cache when the record has not changed since."""
        folder = find_run(data_dir, run_id)
        key, stamp = (str(folder), points), record_stamp(folder)
        with self._lock:
            kept = self._plots.get(key)
            if kept is not None and kept[0] == stamp:
                self._plots.move_to_end(key)
                return kept[1]
        plot = load_plot(data_dir, folder.name, points)  # stamped before it was read
        with self._lock:
            self._plots[key] = (stamp, plot)
            self._plots.move_to_end(key)
            while len(self._plots) > self.size:
                self._plots.popitem(last=False)
        return plot
