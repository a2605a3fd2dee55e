"""`specdeck runs plot` on real recorded runs (tiny models): a PNG of one run or two overlaid,
and the runs view's terminal plots of the same records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.cli import main
from app.plot_data import PHASES, load_plot
from ipc.records import find_run, read_device_rows


@pytest.fixture(scope="module")
def recorded(tiny_pair, tmp_path_factory) -> tuple[Path, str, str]:
    """(data dir, id of a run on the cpu, id of a split run on two simulated GPUs), each a real
    `specdeck run` process."""
    data = tmp_path_factory.mktemp("plotted") / "data"
    env = {**os.environ, "SPECDECK_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    pair = ["--target-model", str(tiny_pair[0]), "--draft-model", str(tiny_pair[1])]
    runs = []
    for placement in (  # both at once: most of each is starting processes and importing torch
        ["--target", "cpu"],
        ["--simulate", "cuda:2", "--target", "sim-cuda:0", "--draft", "sim-cuda:1"],
    ):
        argv = [sys.executable, "-m", "app.cli", "run", *pair, *placement]
        argv += ["--max-new-tokens", "24", "--k", "3", "--json"]
        runs.append(
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    ids = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        ids.append(json.loads(out)["run_id"])
    return data, ids[0], ids[1]


@pytest.fixture
def records(recorded, monkeypatch):
    monkeypatch.setenv("SPECDECK_DATA_DIR", str(recorded[0]))
    return recorded


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # the whole file decodes, not just its header
        assert len(image.getcolors(1 << 20) or ()) > 4  # drawn, not a blank page
        return image.size


def test_a_run_s_plot_is_a_png_named_after_it_in_the_current_folder(
    records, tmp_path, monkeypatch, capsys
):
    _, cpu_run, _ = records
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "plot", cpu_run[:-2]]) == 0  # a unique prefix is enough
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / f"{cpu_run}.png")
    width, height = png_size(Path(printed))
    assert width > 800 and height > 600


def test_two_runs_overlaid_get_a_panel_for_every_device_of_either(records, tmp_path, capsys):
    _, cpu_run, split_run = records
    one, both = tmp_path / "one.png", tmp_path / "both.png"
    assert main(["runs", "plot", cpu_run, "--out", str(one)]) == 0
    assert main(["runs", "plot", cpu_run, split_run, "--out", str(both)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(one), str(both)]
    # the cpu run has one device (cpu); with the split run's two simulated GPUs, three panels
    assert png_size(both)[1] > png_size(one)[1] + 150


def test_the_plotted_series_come_from_the_record(records):
    data, cpu_run, split_run = records
    split = load_plot(data, split_run)
    assert [device for device, _ in split.utilization] == ["cpu", "sim-cuda:0", "sim-cuda:1"]
    # the phases are the record's device rows' phases, in order (a 24-token decode may fall
    # between two samples, so which phases were sampled is the record's to say, not the test's)
    sampled = [row["phase"] for row in read_device_rows(find_run(data, split_run))]
    assert [span.phase for span in split.phases] == [
        phase for i, phase in enumerate(sampled) if i == 0 or sampled[i - 1] != phase
    ]
    assert sampled and all(phase in PHASES for phase in sampled)
    rates = [v for v in split.throughput.values if v is not None]
    assert rates and all(v > 0 for v in rates)
    lengths = split.acceptance.values
    assert all(1.0 <= v <= 4.0 for v in lengths)  # k = 3: at most 3 drafts and a bonus a step
    # one clock for both files: the steps fall among the device samples, and within the decode
    # phase where a sample caught it
    first, last = split.phases[0].start_s, split.phases[-1].end_s
    assert all(first - 1.0 <= t <= last + 1.0 for t in split.acceptance.times)
    for decode in (span for span in split.phases if span.phase == "decode"):
        assert decode.start_s - 1.0 <= split.acceptance.times[-1] <= decode.end_s + 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runs", "plot", "nope"], "no run record 'nope'"),
        (["runs", "plot"], "runs plot needs a run id"),
        (["runs", "plot", "{cpu}", "--out", "plot.svg"], "must name a .png file"),
        (["runs", "show", "{cpu}", "--out", "x.png"], "--out is for runs plot"),
    ],
)
def test_bad_plot_requests_are_one_line_and_status_2(records, capsys, argv, message):
    argv = [a.replace("{cpu}", records[1]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_run_that_never_decoded_has_no_plot(records, capsys):
    from tests.app.recorded import new_record

    failed = new_record(records[0])
    failed.fail("the target daemon died")
    try:
        assert main(["runs", "plot", failed.run_id]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no steps to plot" in err
    finally:
        import shutil

        shutil.rmtree(failed.folder)


async def test_the_runs_view_plots_the_run_under_the_cursor_and_overlays_two_marked(records):
    from app.widgets.run_plots import RunPlots
    from tests.app.dashboard_fakes import make_app, wait_for

    _, *runs = records
    newest, older = sorted(runs, reverse=True)  # the table's first row, and its second
    app = make_app()
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("r")
        await wait_for(pilot, lambda: app.screen.query(RunPlots), "the runs view")
        plots = app.screen.query_one(RunPlots)
        await wait_for(pilot, lambda: plots.shown == (newest,), "the newest run plotted")
        assert "100%" in str(plots.render()) and "cpu" in str(plots.render())  # util panel
        await pilot.press("down")
        await wait_for(pilot, lambda: plots.shown == (older,), "the run under the cursor")
        await pilot.press("space", "up", "space")
        await wait_for(pilot, lambda: plots.shown == (older, newest), "two runs overlaid")
        assert f"A {older} vs B {newest}" in str(plots.border_subtitle)


def test_the_command_line_loads_matplotlib_and_textual_serve_only_for_their_commands():
    code = (
        "import sys, app.cli, app.commands.runs, app.commands.serve, app.plot_data; "
        "print(*(m in sys.modules for m in ('matplotlib', 'textual_serve', 'textual_plotext')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


@pytest.mark.parametrize(("rows", "devices"), [(40, 3), (25, 6), (18, 3), (12, 2)])
def test_the_terminal_panels_fill_the_pane_and_drop_the_phases_when_short(rows, devices):
    from app.widgets.run_plots import PHASE_ROWS, panel_heights

    phase, tokens, acceptance, utilization = panel_heights(rows, devices)
    assert phase + tokens + acceptance + utilization == rows
    assert phase == (PHASE_ROWS if rows >= PHASE_ROWS + 15 else 0)
    assert min(tokens, acceptance) >= 4 and utilization >= min(devices + 3, rows - phase - 8)
