"""A real launch from the dashboard: daemons start, the panes fill, quitting stops them."""

import time

import psutil
import pytest
from textual.content import Content

from app.config import load_config
from app.widgets.acceptance import AcceptancePane
from backends.discovery import discover
from backends.sampler import DeviceSampler

pytestmark = pytest.mark.slow


def _demo_pair_present() -> bool:
    from engine.catalog import demo_pair
    from engine.errors import EngineInputError

    try:
        demo_pair()
    except EngineInputError:
        return False
    return True


@pytest.mark.skipif(not _demo_pair_present(), reason="the bundled demo pair is not built")
async def test_launching_the_demo_pair_fills_the_panes_and_quit_stops_the_daemons():
    from app.dashboard import DashboardApp

    inventory = discover("cuda:2,hip:1")
    sampler = DeviceSampler(inventory, interval_s=0.5)
    app = DashboardApp(load_config(), inventory, sampler, refresh_s=0.25)
    pids: set[int] = set()
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        deadline = time.monotonic() + 10  # the catalog scan runs after the first frame
        while time.monotonic() < deadline and screen.query_one("#models").target is None:
            await pilot.pause(0.1)
        assert screen.query_one("#models").target.bundled
        screen.query_one("#max-new-tokens").value = "400"  # long enough to quit mid-run
        # target on sim-cuda:0, draft on sim-hip:0: a split run over two daemons
        await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter", "l")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and screen.acceptance.mean_al is None:
            await pilot.pause(0.25)
            if screen.handle is not None:
                pids |= set(screen.handle.pids.values())
        assert screen.acceptance.mean_al is not None, [n.message for n in app._notifications]
        figures = str(Content.from_markup(screen.query_one(AcceptancePane).render()))
        assert "mean AL n/a" not in figures
        assert screen.throughput.now is not None
        assert screen.query_one("#output").text
        assert len(pids) == 2
        await pilot.press("ctrl+q")
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, f"daemons left running: {alive}"


async def test_a_daemon_that_fails_is_a_notification_and_the_screen_goes_on():
    from tests.app.dashboard_fakes import fake_model, make_app

    app = make_app(models=(fake_model("gone-target", 0.1), fake_model("gone-draft", 0.05)))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("t", "c", "right", "enter", "d", "enter", "l")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and app.screen.handle is not None:
            await pilot.pause(0.25)
        failures = [n for n in app._notifications if n.severity == "error"]
        assert failures and "gone-target" in failures[0].message
        assert app.screen.handle is None  # launch is possible again
        assert not app.screen.query_one("#launch").disabled
