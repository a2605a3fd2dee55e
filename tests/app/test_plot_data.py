"""app.plot_data: the series both plots draw, from a record the one writer wrote."""

from __future__ import annotations

import time

import pytest

from app.config import data_dir
from app.plot_data import (
    NothingToPlot,
    PhaseSpan,
    PlotCache,
    device_series,
    load_plot,
    phase_line,
    step_series,
)
from backends.base import Sample
from engine.metrics import StepRecord
from ipc.records import read_device_rows
from tests.app.recorded import new_record


def steps(*rows: tuple[int, float, int]) -> list[dict]:
    return [{"index": i, "time_s": t, "committed": c} for i, t, c in rows]


def test_tokens_per_s_is_tokens_over_the_time_since_the_step_before():
    rate, length = step_series(steps((0, 1.0, 3), (1, 1.5, 2), (2, 2.0, 4)))
    assert rate.times == (1.0, 1.5, 2.0)
    assert rate.values == (None, 4.0, 8.0)  # the first step has no step before it
    assert length.values == (3.0, 2.0, 4.0)


def test_a_long_run_is_averaged_down_to_the_points_asked_for():
    rows = [(i, 1.0 + 0.5 * i, 1 + i % 2) for i in range(1000)]
    rate, length = step_series(steps(*rows), points=100)
    assert len(rate.times) == len(length.times) == 100
    assert rate.values[1] == pytest.approx(1.5 / 0.5)  # 10 steps a point, 1.5 tokens each
    assert length.values[1] == pytest.approx(1.5)


def test_a_new_prompt_s_first_step_does_not_count_the_gap_before_it():
    # a workload: the second prompt's steps start again at index 0, after a prefill gap
    rows = steps((0, 1.0, 2), (1, 2.0, 2), (0, 10.0, 5), (1, 11.0, 3))
    rate, _ = step_series(rows, points=1)
    assert rate.values == (pytest.approx((2 + 3) / 2.0),)


def test_phases_last_until_the_next_begins():
    rows = [
        {"time": 100.0 + t, "device_id": d, "phase": p, "utilization_percent": None}
        for t, p in ((0, "load"), (1, "load"), (2, "prefill"), (3, "decode"), (5, "idle"))
        for d in ("cpu", "sim-cuda:0")
    ]
    phases, _ = device_series(rows, 100.0)
    assert phases == (
        PhaseSpan("load", 0.0, 2.0),
        PhaseSpan("prefill", 2.0, 3.0),
        PhaseSpan("decode", 3.0, 5.0),
        PhaseSpan("idle", 5.0, 5.0),
    )
    line = phase_line(phases)
    assert line.values[:4] == (0.0, 0.0, 1.0, 1.0)  # load, then prefill: PHASES' order


def test_a_record_s_samples_and_steps_share_one_clock():
    recorder = new_record(data_dir(), target="sim-cuda:0", draft="sim-cuda:1", k=4)
    for phase, utilization in (("load", 10.0), ("decode", 80.0), ("decode", None)):
        now = time.time()
        recorder.sample(Sample("sim-cuda:0", now, utilization_percent=utilization, phase=phase))
        recorder.step(StepRecord(0 if phase == "load" else 1, 4, 3, 4, 0.01, 0.02), 4.0)
    recorder.finish({"mean_acceptance_length": 4.0})

    rows = list(read_device_rows(recorder.folder))
    assert [r["utilization_percent"] for r in rows] == [10.0, 80.0, None]  # empty cell: None
    plot = load_plot(data_dir(), recorder.run_id)
    assert plot.title == "t <- d, sim-cuda:0 <- sim-cuda:1 (split)"
    assert [p.phase for p in plot.phases] == ["load", "decode"]
    # samples and steps were taken together, so they land at the same seconds of the run
    sample_times = plot.utilization[0][1].times
    assert plot.acceptance.times == pytest.approx(sample_times, abs=0.05)
    assert plot.utilization[0][1].values == (10.0, 80.0, None)


def test_a_run_without_steps_has_nothing_to_plot():
    recorder = new_record(data_dir())
    recorder.fail("the draft daemon died")
    with pytest.raises(NothingToPlot, match=f"no steps to plot in run {recorder.run_id}"):
        load_plot(data_dir(), recorder.run_id)


def test_a_long_run_is_plotted_without_holding_its_steps():
    import tracemalloc

    recorder = new_record(data_dir())
    for i in range(20_000):
        recorder.step(StepRecord(i, 5, 3, 4, 0.001, 0.002, k=5), 4.0)
    recorder.finish({})
    tracemalloc.start()
    try:
        plot = load_plot(data_dir(), recorder.run_id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(plot.acceptance.times) == 150 and plot.acceptance.values[0] == 4.0
    assert peak < 4 * 2**20  # the steps as objects would take about 20 MB


def test_a_record_is_read_again_only_when_it_changed(monkeypatch):
    import app.plot_data as plot_data

    reads, real = [], plot_data.read_steps

    def read_steps(folder):
        reads.append(folder)
        return real(folder)

    monkeypatch.setattr(plot_data, "read_steps", read_steps)
    recorder = new_record(data_dir())
    recorder.step(StepRecord(0, 4, 3, 4, 0.01, 0.02, k=4), 4.0)
    other = new_record(data_dir())
    other.step(StepRecord(0, 4, 1, 2, 0.01, 0.02, k=4), 4.0)
    cache = PlotCache(size=1)

    first = cache.load(data_dir(), recorder.run_id)
    assert cache.load(data_dir(), recorder.run_id) is first and len(reads) == 1

    recorder.step(StepRecord(1, 4, 2, 3, 0.01, 0.02, k=4), 4.0)  # a live run's next step
    again = cache.load(data_dir(), recorder.run_id)
    assert len(reads) == 2 and again.acceptance.values == (4.0, 3.0)

    cache.load(data_dir(), other.run_id)  # pushes the first run out of a cache of one
    cache.load(data_dir(), recorder.run_id)
    assert len(reads) == 4
