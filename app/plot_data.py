"""What a run's plots show, computed once from its record: the PNG and the terminal draw it.

Times are seconds since the record was opened (steps.jsonl's `time_s`); device samples
(devices.csv, unix seconds) are moved onto the same clock with run.json's `started_unix`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ipc.records import load_run, placement_text, read_device_rows

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


def _segments(steps: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Steps cut where one decoding ends and another begins (a workload's next prompt):
    where the step index does not grow."""
    segments: list[list[Mapping[str, Any]]] = []
    for step in steps:
        if not segments or step.get("index", 0) <= segments[-1][-1].get("index", 0):
            segments.append([])
        segments[-1].append(step)
    return segments


def step_series(steps: Sequence[Mapping[str, Any]], points: int = POINTS) -> tuple[Series, Series]:
    """(decode tokens/s, acceptance length) over time, in at most `points` points.

    A point stands for a group of consecutive steps: tokens/s is the tokens they committed
    over the wall time between each and the step before it (a decoding's first step has no
    step before it and counts in neither), acceptance length is their committed tokens per step.
    """
    timed: list[tuple[float, int, float | None]] = []  # (time, committed, seconds since last)
    for segment in _segments(steps):
        previous = None
        for step in segment:
            t = float(step["time_s"])
            timed.append((t, int(step["committed"]), None if previous is None else t - previous))
            previous = t
    group = max(1, math.ceil(len(timed) / max(1, points)))
    times, rates, lengths = [], [], []
    for start in range(0, len(timed), group):
        chunk = timed[start : start + group]
        paced = [(c, dt) for _, c, dt in chunk if dt is not None and dt > 0]
        seconds = sum(dt for _, dt in paced)
        times.append(chunk[-1][0])
        rates.append(sum(c for c, _ in paced) / seconds if seconds > 0 else None)
        lengths.append(sum(c for _, c, _ in chunk) / len(chunk))
    return Series(tuple(times), tuple(rates)), Series(tuple(times), tuple(lengths))


def phase_spans(rows: Sequence[Mapping[str, Any]], t0: float) -> tuple[PhaseSpan, ...]:
    """Where the phase stamped on the device samples stayed the same, on the run's clock."""
    spans: list[PhaseSpan] = []
    for row in sorted(rows, key=lambda r: r["time"]):
        t = row["time"] - t0
        if spans and spans[-1].phase == row["phase"]:
            spans[-1] = PhaseSpan(row["phase"], spans[-1].start_s, t)
        else:
            if spans:  # the previous phase lasted until this one began
                spans[-1] = PhaseSpan(spans[-1].phase, spans[-1].start_s, t)
            spans.append(PhaseSpan(row["phase"], t, t))
    return tuple(spans)


def phase_line(spans: Sequence[PhaseSpan]) -> Series:
    """The phases as a step line for a text plot: the value is the phase's place in PHASES."""
    times: list[float] = []
    values: list[float | None] = []
    for span in spans:
        level = float(PHASES.index(span.phase)) if span.phase in PHASES else None
        times += [span.start_s, span.end_s]
        values += [level, level]
    return Series(tuple(times), tuple(values))


def utilization_series(
    rows: Sequence[Mapping[str, Any]], t0: float, points: int = POINTS
) -> tuple[tuple[str, Series], ...]:
    """Each device's utilization % on the run's clock, averaged down to at most `points`."""
    by_device: dict[str, list[tuple[float, float | None]]] = {}
    for row in sorted(rows, key=lambda r: r["time"]):
        by_device.setdefault(row["device_id"], []).append(
            (row["time"] - t0, row["utilization_percent"])
        )
    out = []
    for device_id, samples in by_device.items():
        group = max(1, math.ceil(len(samples) / max(1, points)))
        times, values = [], []
        for start in range(0, len(samples), group):
            chunk = samples[start : start + group]
            known = [v for _, v in chunk if v is not None]
            times.append(chunk[-1][0])
            values.append(sum(known) / len(known) if known else None)
        out.append((device_id, Series(tuple(times), tuple(values))))
    return tuple(out)


def record_origin(run: Mapping[str, Any]) -> float:
    """The unix time the record was opened: `started_unix`, else `started` (to the second)."""
    if isinstance(run.get("started_unix"), int | float):
        return float(run["started_unix"])
    return datetime.strptime(run["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp()


def run_plot(
    run: Mapping[str, Any], device_rows: Sequence[Mapping[str, Any]], points: int = POINTS
) -> RunPlot:
    """The plots of one run from its record (`load_run`'s document and its device rows)."""
    steps = run.get("steps") or []
    if not steps:
        raise NothingToPlot(
            f"no steps to plot in run {run['run_id']} (status {run.get('status', '?')})"
        )
    throughput, acceptance = step_series(steps, points)
    t0 = record_origin(run)
    summary = run.get("summary") or {}
    return RunPlot(
        run_id=run["run_id"],
        title=f"{run.get('target_model', '?')} <- {run.get('draft_model', '?')}, "
        f"{placement_text(run.get('placement', {}))} ({run.get('mode', '?')})",
        throughput=throughput,
        acceptance=acceptance,
        phases=phase_spans(device_rows, t0),
        utilization=utilization_series(device_rows, t0, points),
        mean_acceptance_length=summary.get("mean_acceptance_length"),
        decode_tokens_per_s=summary.get("decode_tokens_per_s"),
    )


def load_plot(data_dir: str | os.PathLike, run_id: str, points: int = POINTS) -> RunPlot:
    """The plots of a recorded run (a unique prefix of its id is enough).

    Raises `ipc.records.RunNotFound` or `NothingToPlot`, each one line for the user.
    """
    run = load_run(data_dir, run_id)
    return run_plot(run, read_device_rows(run["folder"]), points)
