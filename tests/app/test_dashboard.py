"""The dashboard driven as a user would: mouse drags, keys, launch checks, themes, runs."""

import json
import subprocess
import sys

from textual.content import Content

from app.screens.main import RunEventArrived
from app.widgets.acceptance import AcceptancePane
from app.widgets.devices import DeviceCard, PlacedRole
from app.widgets.models import ModelsPanel
from app.widgets.throughput import ThroughputPane
from tests.app.dashboard_fakes import MODELS, make_app

SIZE = (160, 48)


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def placed(app, device_id: str) -> list[str]:
    card = app.screen.query_one(f"#card-{device_id.replace(':', '-')}", DeviceCard)
    return [chip.role for chip in card.query(PlacedRole)]


async def drag(pilot, source: str, destination: str | None) -> None:
    """Press on `source`, move over `destination` (or far away), release there."""
    await pilot.mouse_down(source)
    if destination is None:
        await pilot.hover(None, offset=(80, 47))
        await pilot.mouse_up(None, offset=(80, 47))
    else:
        await pilot.hover(destination)
        await pilot.mouse_up(destination)
    await pilot.pause()


async def test_dragging_a_chip_onto_a_card_places_the_role():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await drag(pilot, "#chip-target", "#card-sim-cuda-0")
        assert app.screen.board.target == ("sim-cuda:0",)
        assert placed(app, "sim-cuda:0") == ["target"]
        await drag(pilot, "#chip-draft", "#card-sim-hip-0")
        assert app.screen.board.draft == "sim-hip:0"
        assert placed(app, "sim-hip:0") == ["draft"]


async def test_a_click_without_moving_only_chooses_the_chip():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#chip-draft")
        await pilot.pause()
        assert app.screen.board.selected == "draft"
        assert app.screen.board.draft is None
        assert app.screen.query_one("#chip-draft").has_class("-selected")


async def test_an_invalid_drop_is_refused_with_the_reason():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await drag(pilot, "#chip-target", "#card-sim-cuda-0")
        await drag(pilot, "#chip-target", "#card-sim-hip-0")
        assert app.screen.board.target == ("sim-cuda:0",)
        assert any("across vendors" in n for n in notes(app))
        await drag(pilot, "#chip-draft", "#card-sim-cuda-1")  # fits: the draft is small
        assert app.screen.board.draft == "sim-cuda:1"


async def test_a_model_too_big_for_free_memory_is_refused():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await drag(pilot, "#chip-target", "#card-sim-cuda-1")
        assert app.screen.board.target == ()
        assert any("GiB free" in n for n in notes(app))
        assert placed(app, "sim-cuda:1") == []


async def test_dragging_a_role_off_its_card_removes_it_and_onto_another_moves_it():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await drag(pilot, "#chip-draft", "#card-sim-cuda-0")
        await drag(pilot, "#card-sim-cuda-0 PlacedRole", "#card-sim-hip-0")
        assert app.screen.board.draft == "sim-hip:0"
        assert placed(app, "sim-cuda:0") == []
        await drag(pilot, "#card-sim-hip-0 PlacedRole", None)
        assert app.screen.board.draft is None
        assert placed(app, "sim-hip:0") == []


async def test_the_keyboard_places_and_removes_roles():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t", "c", "right", "enter", "right", "enter")
        await pilot.pause()
        assert app.screen.board.target == ("sim-cuda:0", "sim-cuda:1")  # a layer split
        await pilot.press("right", "enter")
        await pilot.pause()
        assert any("across vendors" in n for n in notes(app))
        await pilot.press("d", "enter")
        await pilot.pause()
        assert app.screen.board.draft == "sim-hip:0"
        assert placed(app, "sim-hip:0") == ["draft"]
        await pilot.press("delete")
        await pilot.pause()
        assert app.screen.board.draft is None


async def test_card_bindings_are_shown_in_the_footer():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show}
        assert {"Target chip", "Draft chip", "Place chip", "Remove role", "Next card"} <= shown
        assert {"Launch", "Stop", "Runs"} <= shown


async def test_cards_show_telemetry_and_na_for_what_is_not_reported():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()

        def telemetry(device_id: str) -> DeviceCard:
            return app.screen.query_one(f"#card-{device_id.replace(':', '-')}", DeviceCard)

        assert telemetry("cpu").power_text() == "power n/a  temp n/a"
        assert telemetry("sim-cuda:0").power_text() == "power 120/700 W  temp 45 °C"
        assert "79.0/80.0 GiB" in telemetry("sim-cuda:1").memory_text()
        assert telemetry("sim-cuda:0").utilization_text().endswith("%")
        head = str(Content.from_markup(telemetry("sim-hip:0").render())).splitlines()[0]
        assert "HIP" in head and "SIM" in head and "MI300X" in head


async def test_models_panel_shows_facts_and_the_tokenizer_badge():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        panel = app.screen.query_one(ModelsPanel)
        assert panel.target.name == "big-target-7b" and panel.draft.name == "small-draft-160m"
        assert "13.5 GiB" in str(panel.query_one("#facts-target").render())
        assert "match" in str(panel.query_one("#tokenizer-badge").render())
        panel.query_one("#pick-draft").value = 2
        await pilot.pause()
        assert "differ" in str(panel.query_one("#tokenizer-badge").render())


async def test_launch_checks_the_placement_and_options_first():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        await pilot.pause()
        assert any("TARGET" in n for n in notes(app))
        await pilot.press("t", "c", "enter", "d", "enter")
        app.screen.query_one("#k").value = "lots"
        await pilot.press("l")
        await pilot.pause()
        assert any("k must be" in n for n in notes(app))
        assert app.screen.handle is None


async def test_launch_with_tokenizers_that_differ_is_refused():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t", "c", "enter", "d", "enter")
        app.screen.query_one("#pick-draft").value = 2
        await pilot.pause()
        await pilot.press("l")
        await pilot.pause()
        assert any("tokenizers" in n for n in notes(app))


async def test_run_events_fill_the_acceptance_and_throughput_panes():
    from engine.metrics import StepRecord
    from ipc.events import DoneEvent, StepEvent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        screen.handle = object()
        for i, (accepted, committed) in enumerate([(3, 4), (5, 6)]):
            step = StepRecord(i, 5, accepted, committed, 0.01, 0.02, 0.005, k=5)
            screen.post_message(
                RunEventArrived(StepEvent(step, (1, 2), " x", 5.0, 0.8, (1.0, 0.9, 0.8), 120.0))
            )
        screen.post_message(RunEventArrived(DoneEvent({"baseline": {"decode_tokens_per_s": 60.0}})))
        await pilot.pause()
        acceptance = str(Content.from_markup(screen.query_one(AcceptancePane).render()))
        assert "AL last 6" in acceptance and "5.00" in acceptance and "80%" in acceptance
        throughput = str(Content.from_markup(screen.query_one(ThroughputPane).render()))
        assert "mean 120.0" in throughput and "2.00×" in throughput
        assert " x x" in screen.query_one("#output").text


async def test_theme_switch_is_remembered_in_the_config(tmp_path):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "specdeck-dark"
        app.theme = "specdeck-contrast"
        await pilot.pause()
    from app.config import load_config

    assert load_config().theme == "specdeck-contrast"


async def test_runs_view_lists_and_compares_records(tmp_path):
    from app.config import data_dir
    from app.widgets.runs import RunComparison, RunsTable

    for n, al in (("20260101-000000-aaaa", 2.5), ("20260101-000001-bbbb", 3.5)):
        folder = data_dir() / "runs" / n
        folder.mkdir(parents=True)
        run = {
            "run_id": n,
            "status": "done",
            "target_model": "t",
            "draft_model": "d",
            "placement": {"target": ["cuda:0"], "draft": "cuda:1"},
            "mode": "split",
            "summary": {"mean_acceptance_length": al, "decode_tokens_per_s": 100.0},
        }
        (folder / "run.json").write_text(json.dumps(run))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await pilot.pause(0.3)
        table = app.screen.query_one(RunsTable)
        assert table.row_count == 2
        await pilot.press("space", "down", "space")
        await pilot.pause(0.3)
        text = str(app.screen.query_one(RunComparison).render())
        assert "2.5" in text and "3.5" in text
        await pilot.press("escape")
        assert app.screen.query(DeviceCard)


def test_the_dashboard_never_imports_torch():
    code = (
        "import sys, app.commands.dashboard, app.dashboard, app.screens.main, "
        "app.screens.runs, ipc.runner; print('torch' in sys.modules, "
        "'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_models_fixture_is_consistent():
    assert MODELS[0].tokenizer_fingerprint == MODELS[1].tokenizer_fingerprint
