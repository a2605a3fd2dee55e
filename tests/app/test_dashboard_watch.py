"""Watching from the dashboard a run that `specdeck run` started in another process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from app.screens.main import MainScreen
from app.screens.runs import RunsScreen
from app.widgets.runs import LIVE_STATUS, RunsTable
from tests import watched_runs
from tests.app.dashboard_fakes import make_app, wait_filled, wait_for
from tests.watched_runs import ended, python_process, specdeck_run

run_dirs = watched_runs.run_dirs  # the fixture

pytestmark = pytest.mark.slow
RUN_S = 120  # the CLI's daemons start and decode on a loaded 2-core box


@pytest.fixture
def cli_run(tiny_pair, run_dirs):
    """`specdeck run` of the tiny pair, split, long enough to be watched mid-run."""
    cli = specdeck_run(tiny_pair, k=1, max_new_tokens=700)
    yield cli
    ended(cli)


def notified(app, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


async def open_live_run(pilot) -> MainScreen:
    """From the main screen: the runs view, the run going on marked live, opened with w."""
    app = pilot.app
    main = app.screen
    await wait_filled(pilot)
    await pilot.press("r")
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs view")
    runs = app.screen
    await wait_for(pilot, lambda: runs.live, "the CLI's run to show as live", RUN_S)
    (run_id,) = runs.live
    table = runs.query_one(RunsTable)
    await wait_for(pilot, lambda: table.row_count, "the run's row")
    assert table.get_row(run_id)[2] == LIVE_STATUS
    await pilot.press("w")
    await wait_for(pilot, lambda: app.screen is main, "the main screen again")
    await wait_for(pilot, lambda: main.live_run.watched, "the watch")
    await wait_for(
        pilot, lambda: main.live_run.acceptance.mean_al is not None, "the run's steps", RUN_S
    )
    return main


async def test_a_cli_run_shows_live_and_fills_the_panes_read_only_to_its_end(cli_run):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        main = await open_live_run(pilot)
        live = main.live_run
        assert live.throughput.mean is not None
        await wait_for(pilot, lambda: main.output_pane.text, "the output")
        # the device cards show the watched run's roles with its daemons' pids
        cpu = main.query_one("DeviceGrid").card("cpu")
        await wait_for(pilot, lambda: len(cpu.roles) == 2, "both roles on the cpu card")
        assert {r.pid for r in cpu.roles} == set(live.handle.pids.values())
        await pilot.press("s")
        await wait_for(pilot, lambda: notified(app, "watched read-only"), "the refusal")
        assert cli_run.poll() is None  # s did not stop it
        await wait_for(pilot, lambda: not live.busy, "the run's end", RUN_S)
        assert live.outcome == "done"
        await wait_for(pilot, lambda: notified(app, "has ended: done"), "the view saying so")
    out, err = cli_run.communicate(timeout=60)
    assert cli_run.returncode == 0, err
    document = json.loads(out)
    assert document["new_tokens"] == 700
    assert live.output == document["output_text"]


# a script's run (start_run in a process of its own): many prompts, so it outlasts the test
SCRIPT_RUN = """
import sys
from backends.discovery import discover
from ipc.run_spec import RunSpec, check_run
from ipc.runner import start_run
spec = RunSpec(target_model=sys.argv[1], draft_model=sys.argv[2], target=("cpu",), draft="cpu",
               mode="split", k=1, prompts=("def f(x):",) * 200, max_new_tokens=500)
handle = start_run(check_run(spec, discover()), inventory=discover())
try:
    handle.wait_to_end()
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.fixture
def script_run(tiny_pair, run_dirs):
    script = python_process("-c", SCRIPT_RUN, str(tiny_pair[0]), str(tiny_pair[1]))
    yield script
    ended(script)


def steps_recorded(run_id: str) -> int:
    steps = Path(os.environ["SPECDECK_DATA_DIR"]) / "runs" / run_id / "steps.jsonl"
    return steps.stat().st_size if steps.exists() else 0


async def test_leaving_or_quitting_a_watched_run_does_not_stop_it(script_run):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        main = await open_live_run(pilot)
        run_id = main.live_run.handle.run_id
        await pilot.press("u")  # stop watching
        await wait_for(pilot, lambda: not main.live_run.busy, "the watch's end")
        assert main.live_run.outcome is None  # the watched run did not end
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs view")
        runs = app.screen
        await wait_for(pilot, lambda: run_id in runs.live, "the run, still live")
        await pilot.press("w")
        await wait_for(pilot, lambda: main.live_run.watched, "the watch again")
        await pilot.press("ctrl+q")
    # quitting the dashboard left the run alone: it goes on recording steps
    recorded, deadline = steps_recorded(run_id), time.monotonic() + RUN_S
    while steps_recorded(run_id) <= recorded:
        assert time.monotonic() < deadline, "the run recorded no more steps"
        time.sleep(0.05)
    assert script_run.poll() is None
    script_run.send_signal(signal.SIGINT)
    assert script_run.wait(RUN_S) == 130
    record = Path(os.environ["SPECDECK_DATA_DIR"]) / "runs" / run_id / "run.json"
    assert json.loads(record.read_text())["status"] == "stopped"
