"""A real launch from the dashboard: daemons start, the panes fill, quitting stops them."""

import os
import signal
import time

import psutil
import pytest
from textual.content import Content

from app.config import load_config
from app.widgets.acceptance import AcceptancePane
from app.widgets.output import OutputPane
from backends.discovery import discover
from backends.sampler import DeviceSampler
from tests.app.dashboard_fakes import wait_filled, wait_for

pytestmark = pytest.mark.slow
RUN_S = 120  # a run of the demo pair on a loaded 2-core box, daemons' start included


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
        await wait_filled(pilot)  # the run controls mount after the first frame
        models = screen.query_one("#models")
        await wait_for(pilot, lambda: models.target is not None, "the catalog scan")
        assert models.target.bundled
        screen.query_one("#max-new-tokens").value = "400"  # long enough to quit mid-run
        # target on sim-cuda:0, draft on sim-hip:0: a split run over two daemons
        await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter", "l")

        def decoding() -> bool:
            if screen.live_run.handle is not None:
                pids.update(screen.live_run.handle.pids.values())
            return screen.live_run.acceptance.mean_al is not None or any(
                n.severity == "error" for n in app._notifications
            )

        await wait_for(pilot, decoding, "the first steps", RUN_S)
        assert screen.live_run.acceptance.mean_al is not None, [
            n.message for n in app._notifications
        ]
        figures = str(Content.from_markup(screen.query_one(AcceptancePane).render()))
        assert "mean AL n/a" not in figures
        assert screen.live_run.throughput.now is not None
        assert screen.query_one("#output").text
        assert len(pids) == 2
        await pilot.press("ctrl+q")
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, f"daemons left running: {alive}"


@pytest.mark.skipif(not _demo_pair_present(), reason="the bundled demo pair is not built")
async def test_the_output_pane_streams_the_records_text_from_its_first_token(monkeypatch):
    """Each piece as it streams in (before the run's end): together, the record's text."""
    from app.config import data_dir
    from app.dashboard import DashboardApp
    from ipc.records import load_run

    streamed: list[str] = []
    append = OutputPane.append
    monkeypatch.setattr(
        OutputPane, "append", lambda pane, text: (streamed.append(text), append(pane, text))
    )
    inventory = discover("cuda:2,hip:1")
    app = DashboardApp(load_config(), inventory, DeviceSampler(inventory, interval_s=0.5))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        await wait_for(pilot, lambda: screen.query_one("#models").target, "the catalog scan")
        screen.query_one("#prompt").value = "The capital of France is"
        screen.query_one("#max-new-tokens").value = "24"
        await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter", "l")
        await wait_for(pilot, lambda: screen.live_run.handle is not None, "the launch")
        run_id = screen.live_run.handle.run_id
        await wait_for(pilot, lambda: not screen.live_run.busy, "the run's end", RUN_S)
        shown = screen.query_one(OutputPane).text
    record = load_run(data_dir(), run_id)
    text = (record.get("summary") or record)["output_text"]
    assert record["status"] == "done", record
    assert text and "".join(streamed) == text
    assert shown == text


async def test_a_daemon_that_dies_is_a_notification_and_the_screen_goes_on(tiny_pair):
    from engine.catalog import describe_model
    from tests.app.dashboard_fakes import make_app

    app = make_app(models=tuple(describe_model(folder) for folder in tiny_pair))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        screen.query_one("#max-new-tokens").value = "900"  # long enough to die mid-run
        # target on sim-cuda:0, draft on sim-hip:0: a split run over two daemons
        await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter", "l")
        await wait_for(pilot, lambda: "draft" in screen.live_run.daemons, "the draft daemon")
        os.kill(screen.live_run.daemons["draft"].pid, signal.SIGKILL)
        # a notification lives 10 s: look for it while it is on screen
        said = lambda: [n.title for n in app._notifications if n.severity == "error"]  # noqa: E731
        await wait_for(pilot, lambda: "draft failed" in said(), "the draft's death said", RUN_S)
        await wait_for(pilot, lambda: not screen.live_run.busy, "the run's end", RUN_S)
        assert screen.live_run.outcome == "failed"
        died = [e for e in screen.event_log.entries if e.level == "error" and e.role == "draft"]
        assert died, [e.text for e in screen.event_log.entries]
        assert not screen.query_one("#launch").disabled  # launch is possible again
        assert screen.query_one("#controls").border_subtitle == "failed"


@pytest.mark.skipif(not _demo_pair_present(), reason="the bundled demo pair is not built")
async def test_a_target_that_fits_only_on_two_small_cards_is_built_card_by_card_and_runs(
    monkeypatch,
):
    """Simulated CUDA cards (`--simulate cuda:4`) with too little memory for the target alone:
    the first card is welcome with what is missing, launch is refused until the second card
    joins, and then the split target runs."""
    from dataclasses import replace

    import backends.simulated
    from app.config import data_dir
    from app.dashboard import DashboardApp
    from backends.placement import memory_need
    from engine.catalog import demo_pair
    from ipc.records import load_run

    inventory = discover("cuda:4,hip:1")
    sampler = DeviceSampler(inventory, interval_s=0.1)
    app = DashboardApp(load_config(), inventory, sampler, models=demo_pair(), refresh_s=0.1)
    # sim-cuda:2 and sim-cuda:3 hold the same idle memory (856 MiB), and their readings wobble
    # by 8 MiB: free room for 3/4 of the target on each leaves one short and two enough
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        await wait_for(pilot, lambda: screen.board.target_bytes, "the target's size")
        need = memory_need(screen.board.target_bytes)
        card = backends.simulated.MODELS["cuda"]
        small = replace(card, memory_total_bytes=856 * 2**20 + int(0.75 * need))
        monkeypatch.setitem(backends.simulated.MODELS, "cuda", small)
        free = lambda: screen.board.free_bytes.get("sim-cuda:2") or need  # noqa: E731
        await wait_for(pilot, lambda: free() < need, "the small cards' readings")

        async def place(chip: str, device_id: str) -> None:
            await pilot.press(chip)
            screen.query_one(f"#card-{device_id.replace(':', '-')}").focus()
            await pilot.press("enter")

        await place("d", "sim-hip:0")
        await place("t", "sim-cuda:2")
        await wait_for(pilot, lambda: screen.board.target == ("sim-cuda:2",), "one target card")
        roles = screen.query_one("#palette")
        assert roles.border_subtitle and roles.border_subtitle.startswith("target: ")
        assert any("add a card to the TARGET" in n.message for n in app._notifications)
        await pilot.press("l")
        await wait_for(
            pilot,
            lambda: any(n.title == "cannot launch" for n in app._notifications),
            "the launch refused",
        )
        assert not screen.live_run.busy
        await place("t", "sim-cuda:3")
        await wait_for(pilot, lambda: roles.border_subtitle is None, "the split to fit")
        await pilot.press("l")
        await wait_for(pilot, lambda: screen.live_run.handle is not None, "the launch")
        run_id = screen.live_run.handle.run_id
        await wait_for(pilot, lambda: not screen.live_run.busy, "the run's end", RUN_S)
    sampler.stop()
    record = load_run(data_dir(), run_id)
    assert record["status"] == "done", record
    assert record["placement"]["target"] == ["sim-cuda:2", "sim-cuda:3"]
