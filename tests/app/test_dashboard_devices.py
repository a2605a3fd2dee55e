"""Devices that go or come while the dashboard runs, and the memory of a daemon on a card."""

import asyncio
import re
import subprocess
import sys

import psutil
import pytest

from app.screens.main import RunEventArrived
from app.widgets.devices import DeviceCard, PlacedRole
from app.widgets.telemetry import HistoryChart
from backends.base import Device
from ipc.events import DaemonEvent
from tests.app.dashboard_fakes import GIB, GPU_PID, as_if_launched, make_app, wait_filled, wait_for

SIZE = (160, 48)
REFRESH_S = 0.05  # the screen reads the sampler this often in these tests
HELD_BYTES = 64 * 2**20  # what the child process below keeps resident


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def card_ids(app) -> list[str]:
    return [card.device.id for card in app.screen.query(DeviceCard)]


def labels(app, device_id: str) -> list[str]:
    card = app.screen.query_one(f"#card-{device_id.replace(':', '-')}", DeviceCard)
    return [str(chip.render()) for chip in card.query(PlacedRole)]


async def sample_and_show(app, pilot, shown, what: str) -> None:
    """One round of the sampler (its thread is paused in tests), then wait until the screen's
    refresh shows it: `shown()` holds."""
    app.sampler.poll()
    await wait_for(pilot, shown, what)


async def test_a_device_that_goes_loses_its_card_and_the_role_on_it_says_why():
    app = make_app(refresh_s=REFRESH_S)
    backend = app.inventory.owners["sim-cuda:0"]
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter")
        await wait_for(pilot, lambda: app.screen.board.draft == "sim-hip:0", "the roles placed")
        assert app.screen.board.target == ("sim-cuda:0",)

        backend.unplug("sim-cuda:0")
        await sample_and_show(
            app,
            pilot,
            lambda: (
                card_ids(app) == ["cpu", "sim-cuda:1", "sim-hip:0"]
                and "sim-cuda:0 has gone" in "\n".join(e.text for e in app.screen.event_log.entries)
            ),
            "the card gone and logged",
        )

        assert card_ids(app) == ["cpu", "sim-cuda:1", "sim-hip:0"]
        assert app.screen.board.target == ()
        assert app.screen.board.draft == "sim-hip:0"  # the rest of the placement stays
        assert any("TARGET taken off sim-cuda:0: the device has gone" in n for n in notes(app)), (
            notes(app)
        )
        log = "\n".join(line.text for line in app.screen.event_log.entries)
        assert "sim-cuda:0 has gone" in log
        assert "sim-cuda:0" not in app.screen.query_one(HistoryChart).render()

        # the board goes on working without it
        assert app.screen.place("target", "sim-hip:0")
        assert app.screen.board.target == ("sim-hip:0",)
        assert app.screen.board.why_not("target", "sim-cuda:0") == "no device 'sim-cuda:0' any more"


async def test_a_device_that_appears_gets_a_card_in_device_order():
    app = make_app(refresh_s=REFRESH_S)
    backend = app.inventory.owners["sim-cuda:0"]
    async with app.run_test(size=SIZE) as pilot:
        backend.plug(Device("sim-cuda:2", "cuda", "Simulated NVIDIA H100", 2, True, 80 * GIB))
        await sample_and_show(
            app,
            pilot,
            lambda: len(card_ids(app)) == 5 and "sim-cuda:2" in app.screen.board.devices,
            "the new card, and the board following it",
        )

        assert card_ids(app) == ["cpu", "sim-cuda:0", "sim-cuda:1", "sim-hip:0", "sim-cuda:2"]
        assert app.screen.place("draft", "sim-cuda:2")
        await wait_for(pilot, lambda: labels(app, "sim-cuda:2") == [" DRAFT "], "the draft shown")


@pytest.fixture
def resident_child():
    """A real process that keeps HELD_BYTES of written memory resident until the test ends."""
    code = f"import time; held = b'x' * {HELD_BYTES}; print('ready', flush=True); time.sleep(60)"
    children = []
    try:
        while not children or children[-1].pid == GPU_PID:  # that pid has a GPU figure
            children.append(
                subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            )
        assert children[-1].stdout.readline().strip() == "ready"
        yield children[-1]
    finally:
        for child in children:
            child.kill()
            child.wait()


@pytest.mark.parametrize("device_id", ["sim-cuda:0", "cpu"])
async def test_a_daemon_on_a_card_that_runs_on_the_host_shows_its_resident_memory(
    device_id, resident_child
):
    app = make_app(refresh_s=REFRESH_S)
    pid = resident_child.pid
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.place("target", device_id)
        as_if_launched(app.screen)  # the runner reports the daemon's pid
        app.screen.post_message(RunEventArrived(DaemonEvent("target", pid, (device_id,))))
        await sample_and_show(
            app, pilot, lambda: "RSS" in "".join(labels(app, device_id)), "the daemon's memory"
        )

        (label,) = labels(app, device_id)
        shown = re.fullmatch(rf" TARGET pid {pid} RSS (\d+) MiB ", label)
        assert shown, label
        rss_mib = psutil.Process(pid).memory_info().rss / 2**20
        assert int(shown.group(1)) >= HELD_BYTES / 2**20
        assert abs(int(shown.group(1)) - rss_mib) <= 2


async def test_a_daemon_the_device_reports_shows_the_device_figure_not_its_rss():
    app = make_app(refresh_s=REFRESH_S)
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.place("target", "sim-cuda:0")
        as_if_launched(app.screen)
        app.screen.post_message(RunEventArrived(DaemonEvent("target", GPU_PID, ("sim-cuda:0",))))
        want = [f" TARGET pid {GPU_PID} 3.0 GiB "]
        await sample_and_show(
            app, pilot, lambda: labels(app, "sim-cuda:0") == want, "the daemon's memory"
        )


async def test_a_daemon_whose_memory_changes_keeps_its_chip_and_shows_the_new_figure():
    app = make_app(refresh_s=REFRESH_S)
    backend = app.inventory.owners["sim-cuda:0"]
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.place("target", "sim-cuda:0")
        as_if_launched(app.screen)
        app.screen.post_message(RunEventArrived(DaemonEvent("target", GPU_PID, ("sim-cuda:0",))))
        first = [f" TARGET pid {GPU_PID} 3.0 GiB "]
        await sample_and_show(app, pilot, lambda: labels(app, "sim-cuda:0") == first, "3 GiB")
        card = app.screen.query_one("#card-sim-cuda-0", DeviceCard)
        chip = card.query_one(PlacedRole)

        backend.gpu_process_bytes = 5 * GIB
        later = [f" TARGET pid {GPU_PID} 5.0 GiB "]
        await sample_and_show(app, pilot, lambda: labels(app, "sim-cuda:0") == later, "5 GiB")

        assert card.query_one(PlacedRole) is chip  # relabelled, not mounted again
        assert chip.label == later[0]  # what a drag of it would show


async def test_gpus_discovered_after_the_first_frame_get_cards_at_once():
    from app.config import load_config
    from app.dashboard import DashboardApp
    from backends.discovery import Inventory
    from tests.app.dashboard_fakes import DEVICES, MODELS, FixedBackend, PausedSampler

    late = FixedBackend()
    late.present = [d for d in DEVICES if d.id != "cpu"]
    host = FixedBackend()
    host.present = [DEVICES[0]]
    inventory = Inventory(devices=(DEVICES[0],), owners={"cpu": host}, backends=(host,))
    sampler = PausedSampler(inventory, interval_s=1.0, history=120, discover_first=(late,))
    app = DashboardApp(load_config(), inventory, sampler, models=MODELS, refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        assert card_ids(app) == ["cpu"]
        await asyncio.to_thread(sampler.discover_pending)  # as the sampler's thread does
        await wait_for(pilot, lambda: len(card_ids(app)) == 4, "the GPUs' cards")
        assert card_ids(app) == ["sim-cuda:0", "sim-cuda:1", "sim-hip:0", "cpu"]


async def test_the_catalog_arriving_while_the_pickers_mount_does_not_break_them():
    """The catalog scan (on Ready) may end between the two pickers' mounts."""
    from textual.app import App
    from textual.widgets import Select

    from app.widgets.models import ModelsPanel
    from tests.app.dashboard_fakes import MODELS

    class Host(App):
        def compose(self):
            yield ModelsPanel(id="models")

    app = Host()
    async with app.run_test() as pilot:
        panel = app.query_one(ModelsPanel)
        mount = panel.mount

        def mount_then_catalog(*widgets, **kw):
            done = mount(*widgets, **kw)
            if not panel.models:
                panel.set_models(MODELS)  # the scan's result, mid-fill
            return done

        panel.mount = mount_then_catalog
        await panel.fill()
        await wait_for(pilot, lambda: len(panel.query(Select)) == 2, "both pickers")
        pickers = {p.id: p.value for p in panel.query(Select)}
        assert pickers == {"pick-target": 0, "pick-draft": 1}
        assert (panel.target, panel.draft) == (MODELS[0], MODELS[1])
