"""Snapshots of the main screen over fixed simulated devices (update: --snapshot-update)."""

import pytest

from app.screens.main import RunEventArrived
from app.widgets.devices import DeviceCard
from engine.metrics import StepRecord
from ipc.events import DaemonEvent, StepEvent
from tests.app.dashboard_fakes import as_if_launched, make_app, wait_filled, wait_for

SIZE = (160, 48)
SMALLEST = (80, 24)  # the smallest terminal the dashboard is laid out for


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch):
    monkeypatch.setattr("app.widgets.log.stamp", lambda: "12:00:00")


async def _place_and_stream(pilot) -> None:
    """Target on sim-cuda:0, draft on sim-hip:0, then a few steps of a run."""
    await wait_filled(pilot)
    await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter")
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.board.draft == "sim-hip:0", "the roles placed")
    as_if_launched(screen)  # events arrive as the runner sends them
    screen.post_message(RunEventArrived(DaemonEvent("target", 4242, ("sim-cuda:0",))))
    pattern = [(4, 5), (2, 3), (5, 6), (3, 4), (1, 2), (4, 5)]
    for i, (accepted, committed) in enumerate(pattern):
        step = StepRecord(i, 5, accepted, committed, 0.004, 0.011, 0.002, k=5)
        mean = sum(c for _, c in pattern[: i + 1]) / (i + 1)
        screen.post_message(
            RunEventArrived(
                StepEvent(step, (1,), " fib(n - 1)", mean, 0.7, (0.9, 0.8, 0.7, 0.6, 0.4), 230.5)
            )
        )
    await wait_for(
        pilot, lambda: len(screen.live_run.acceptance.history) == len(pattern), "the steps"
    )
    screen.query_one("#k").focus()
    await pilot.press("escape")
    await wait_for(pilot, lambda: isinstance(pilot.app.focused, DeviceCard), "the cards focused")


def test_main_screen_with_a_run_going_on(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=_place_and_stream)


def test_main_screen_at_80_by_24_with_a_run_going_on(snap_compare):
    """Every pane, Launch and `l Launch` in the footer on the smallest terminal."""
    assert snap_compare(make_app(), terminal_size=SMALLEST, run_before=_place_and_stream)


def test_main_screen_high_contrast_theme(snap_compare):
    app = make_app(theme="specdeck-contrast")
    assert snap_compare(app, terminal_size=SIZE, run_before=wait_filled)


def test_main_screen_light_theme_with_a_run_going_on(snap_compare):
    app = make_app(theme="specdeck-light")
    assert snap_compare(app, terminal_size=SIZE, run_before=_place_and_stream)
