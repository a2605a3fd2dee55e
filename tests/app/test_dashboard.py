"""The dashboard driven as a user would: mouse drags, keys, launch checks, themes, runs."""

import json
import re
import shutil
import subprocess
import sys

from textual.content import Content

from app.screens.main import RunEventArrived
from app.widgets.acceptance import AcceptancePane
from app.widgets.devices import DeviceCard, PlacedRole
from app.widgets.models import ModelsPanel
from app.widgets.throughput import ThroughputPane
from tests.app.dashboard_fakes import (
    MODELS,
    as_if_launched,
    fake_model,
    make_app,
    wait_filled,
    wait_for,
)

SIZE = (160, 48)


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def titles(app) -> list[str]:
    return [n.title for n in app._notifications]


def screen_text(app) -> str:
    """The characters on the screen, as the compositor draws them."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def placed(app, device_id: str) -> list[str]:
    card = app.screen.query_one(f"#card-{device_id.replace(':', '-')}", DeviceCard)
    return [chip.role for chip in card.query(PlacedRole)]


async def drag(pilot, source: str, destination: str | None) -> None:
    """Press on `source`, move over `destination` (or far away), release there; then wait
    until the drop has been judged (placed, moved, removed, or refused with a notification)."""
    app = pilot.app
    before = (app.screen.board, len(app._notifications))
    await pilot.mouse_down(source)
    if destination is None:
        await pilot.hover(None, offset=(80, 47))
        await pilot.mouse_up(None, offset=(80, 47))
    else:
        await pilot.hover(destination)
        await pilot.mouse_up(destination)
    await wait_for(
        pilot,
        lambda: (app.screen.board, len(app._notifications)) != before,
        f"the drop of {source} on {destination}",
    )
    await settle_cards(pilot)


async def settle_cards(pilot) -> None:
    """Wait until every card shows the roles the board puts on it."""
    screen = pilot.app.screen

    def shown() -> bool:
        return all(
            [chip.role for chip in card.query(PlacedRole)]
            == list(screen.board.roles_on(card.drop_id))
            for card in screen.query(DeviceCard)
        )

    await wait_for(pilot, shown, "the cards to show the placed roles")


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
        await wait_for(pilot, lambda: app.screen.board.selected == "draft", "the draft chosen")
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


async def test_a_target_too_big_for_every_card_of_its_kind_is_refused():
    app = make_app(models=(fake_model("huge-target", 100), MODELS[1]))
    async with app.run_test(size=SIZE) as pilot:
        await drag(pilot, "#chip-target", "#card-sim-cuda-1")
        assert app.screen.board.target == ()
        assert any("GiB free, all of them together" in n for n in notes(app)), notes(app)
        assert placed(app, "sim-cuda:1") == []


async def test_a_target_too_big_for_one_card_is_placed_and_the_pane_says_what_is_missing():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        await drag(pilot, "#chip-target", "#card-sim-cuda-1")  # 1 GiB free of the 16.2 needed
        await drag(pilot, "#chip-draft", "#card-sim-hip-0")
        assert app.screen.board.target == ("sim-cuda:1",)
        roles = app.screen.query_one("#palette")
        assert roles.border_subtitle == "target: 15.2 GiB short"
        assert any(
            "add a card to the TARGET (sim-cuda:0 has 78.0 GiB free)" in n for n in notes(app)
        )
        await pilot.press("l")
        await wait_for(pilot, lambda: "cannot launch" in titles(app), "the launch refused")
        assert not app.screen.live_run.busy
        await drag(pilot, "#chip-target", "#card-sim-cuda-0")  # the split holds it
        assert app.screen.board.target == ("sim-cuda:1", "sim-cuda:0")
        await wait_for(pilot, lambda: roles.border_subtitle is None, "the shortfall to go")


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
        board = lambda: app.screen.board  # noqa: E731
        await pilot.press("t", "c", "right", "enter", "right", "enter")
        split = ("sim-cuda:0", "sim-cuda:1")  # a layer split
        await wait_for(pilot, lambda: board().target == split, "the target on two cards")
        await pilot.press("right", "enter")
        await wait_for(pilot, lambda: any("across vendors" in n for n in notes(app)), "a refusal")
        await pilot.press("d", "enter")
        await wait_for(pilot, lambda: board().draft == "sim-hip:0", "the draft placed")
        await settle_cards(pilot)
        assert placed(app, "sim-hip:0") == ["draft"]
        await pilot.press("delete")
        await wait_for(pilot, lambda: board().draft is None, "the draft removed")


async def test_card_bindings_are_shown_in_the_footer():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, DeviceCard), "a card focused")
        shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show}
        assert {"Target chip", "Draft chip", "Place", "Remove", "Next card"} <= shown
        assert {"Launch", "Stop", "Runs"} <= shown


async def test_cards_show_telemetry_and_na_for_what_is_not_reported():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:

        def telemetry(device_id: str) -> DeviceCard:
            return app.screen.query_one(f"#card-{device_id.replace(':', '-')}", DeviceCard)

        cards = ("cpu", "sim-cuda:0", "sim-cuda:1", "sim-hip:0")
        await wait_for(pilot, lambda: all(telemetry(i).sample for i in cards), "the readings")

        assert telemetry("cpu").power_text() == "power n/a  temp n/a"
        assert telemetry("sim-cuda:0").power_text() == "power 120/700 W  temp 45 °C"
        assert "79.0/80.0 GiB" in telemetry("sim-cuda:1").memory_text()
        assert telemetry("sim-cuda:0").utilization_text().endswith("%")
        # badges, then the name (on the next line when it does not fit beside them)
        head = str(Content.from_markup(telemetry("sim-hip:0").render())).splitlines()[:2]
        assert "HIP" in head[0] and "SIM" in head[0] and "MI300X" in " ".join(head)
        assert "Simulated AMD Instinct MI300X" in screen_text(app)  # not cut


async def test_models_panel_shows_facts_and_the_tokenizer_badge():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        panel = app.screen.query_one(ModelsPanel)
        assert panel.target.name == "big-target-7b" and panel.draft.name == "small-draft-160m"
        assert "13.5 GiB" in str(panel.query_one("#facts-target").render())
        assert "match" in str(panel.query_one("#tokenizer-badge").render())
        panel.query_one("#pick-draft").value = 2
        badge = panel.query_one("#tokenizer-badge")
        await wait_for(pilot, lambda: "differ" in str(badge.render()), "the badge to say differ")


async def test_launch_checks_the_placement_and_options_first():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")  # before the controls are there: it waits for them
        await wait_for(pilot, lambda: any("TARGET" in n for n in notes(app)), "a refusal")
        await pilot.press("t", "c", "enter", "d", "enter")
        app.screen.query_one("#k").value = "lots"
        await pilot.press("l")
        await wait_for(pilot, lambda: any("k must be" in n for n in notes(app)), "a refusal")
        # the one check's bounds and sentences, as `specdeck run` has them
        assert "k must be a whole number from 1 to 64 or 'auto', not 'lots'" in notes(app)
        assert not app.screen.live_run.busy
        app.screen.query_one("#k").value = "4"
        app.screen.query_one("#max-new-tokens").value = "0"
        await pilot.press("l")
        said = "max new tokens must be from 1 to 1000000, not 0"
        await wait_for(pilot, lambda: said in notes(app), "the budget refused")


async def test_launch_with_tokenizers_that_differ_is_refused(tiny_pair, tmp_path):
    """The one check reads the folders picked (the same refusal as `specdeck run`)."""
    from engine.catalog import describe_model
    from tests.tiny_models import make_tokenizer

    other = tmp_path / "other-tok"
    shutil.copytree(tiny_pair[1], other)
    make_tokenizer(other, vocab_size=300)
    models = tuple(describe_model(folder) for folder in (*tiny_pair, other))
    app = make_app(models=models)
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        await pilot.press("t", "c", "enter", "d", "enter")
        app.screen.query_one("#pick-draft").value = 2
        panel = app.screen.query_one(ModelsPanel)
        await wait_for(pilot, lambda: panel.draft is models[2], "the other draft chosen")
        await pilot.press("l")
        await wait_for(pilot, lambda: any("tokenizers" in n for n in notes(app)), "a refusal")
        assert "other-tok" in notes(app)[-1] and not app.screen.live_run.busy


async def test_run_events_fill_the_acceptance_and_throughput_panes():
    from engine.metrics import StepRecord
    from ipc.events import DoneEvent, StepEvent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        as_if_launched(screen)
        for i, (accepted, committed) in enumerate([(3, 4), (5, 6)]):
            step = StepRecord(i, 5, accepted, committed, 0.01, 0.02, 0.005, k=5)
            screen.post_message(
                RunEventArrived(StepEvent(step, (1, 2), " x", 5.0, 0.8, (1.0, 0.9, 0.8), 120.0))
            )
        screen.post_message(RunEventArrived(DoneEvent({"baseline": {"decode_tokens_per_s": 60.0}})))
        await wait_for(pilot, lambda: screen.live_run.throughput.baseline == 60.0, "the run's end")
        acceptance = str(Content.from_markup(screen.query_one(AcceptancePane).render()))
        assert "AL last 6" in acceptance and "5.00" in acceptance and "80%" in acceptance
        throughput = str(Content.from_markup(screen.query_one(ThroughputPane).render()))
        assert "mean 120.0" in throughput and "2.00×" in throughput
        assert " x x" in screen.query_one("#output").text


async def test_many_quick_steps_repaint_the_figures_a_few_times_and_end_on_the_last():
    from engine.metrics import StepRecord
    from ipc.events import StepEvent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        as_if_launched(screen)
        pane = screen.query_one(AcceptancePane)
        shown = []
        screen.watch(pane, "figures", lambda figures: shown.append(figures), init=False)
        steps = 40
        for i in range(steps):
            step = StepRecord(i, 5, i % 5, i % 5 + 1, 0.01, 0.02, 0.005, k=5)
            event = StepEvent(step, (1,), " x", 1.0 + i / 10, 0.5, (1.0,), 100.0 + i)
            screen.post_message(RunEventArrived(event))
        last_mean = 100.0 + steps - 1
        await wait_for(pilot, lambda: screen.live_run.throughput.mean == last_mean, "the steps")
        await wait_for(pilot, lambda: pane.figures == screen.live_run.acceptance, "the last shown")
        assert 1 <= len(shown) < steps  # the first at once, the rest a few times a second
        throughput = str(Content.from_markup(screen.query_one(ThroughputPane).render()))
        assert f"mean {last_mean:.1f}" in throughput


async def test_theme_switch_is_remembered_in_the_config(tmp_path):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        assert app.theme == "specdeck-dark"
        app.theme = "specdeck-contrast"
        await wait_for(pilot, lambda: app._saved_theme == "specdeck-contrast", "the theme saved")
    from app.config import load_config

    assert load_config().theme == "specdeck-contrast"


async def test_runs_view_lists_and_compares_records(tmp_path):
    from app.config import data_dir
    from app.widgets.runs import RunsTable

    split = [f"cuda:{i}" for i in range(8)]  # a long value must not push the next column
    for n, al, target in (("20260101-000000-aaaa", 2.5, []), ("20260101-000001-bbbb", 3.5, split)):
        folder = data_dir() / "runs" / n
        folder.mkdir(parents=True)
        run = {
            "run_id": n,
            "status": "done",
            "target_model": "t",
            "draft_model": "d",
            "placement": {"target": target or ["cuda:0"], "draft": "cuda:1"},
            "mode": "split",
            "summary": {"mean_acceptance_length": al, "decode_tokens_per_s": 100.0},
        }
        (folder / "run.json").write_text(json.dumps(run))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await wait_for(pilot, lambda: app.screen.query(RunsTable), "the runs view")
        table = app.screen.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 2, "two rows")
        await pilot.press("space", "down", "space")
        await wait_for(pilot, lambda: "mean AL" in screen_text(app), "the comparison")
        rows = {line.split()[1]: line for line in screen_text(app).splitlines() if "│ " in line}
        assert "3.50" in rows["mean"] and "2.50" in rows["mean"]
        # run B's column starts at one place in every row, whatever run A's values are
        starts = {rows["run"].rindex("20260101-000000-aaaa"), rows["mean"].rindex("2.50")}
        starts |= {rows["status"].rindex("done"), rows["placement"].rindex("target")}
        assert len(starts) == 1, rows
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen.query(DeviceCard), "the main screen again")


def test_the_dashboard_never_imports_torch_nor_the_run_command():
    code = (
        "import sys, app.commands.dashboard, app.dashboard, app.screens.main, "
        "app.screens.runs, app.run_control, ipc.runner, ipc.run_spec; "
        "print(*(m in sys.modules for m in ('torch', 'transformers', 'app.commands.run')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_models_fixture_is_consistent():
    assert MODELS[0].tokenizer_fingerprint == MODELS[1].tokenizer_fingerprint


async def test_keys_open_the_model_pickers_and_the_footer_lists_them():
    from textual.widgets import Select

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show}
        assert {"Target model", "Draft model"} <= shown
        for key, role in (("T", "target"), ("D", "draft")):
            await pilot.press("escape", key)
            picker = app.screen.query_one(f"#pick-{role}", Select)
            await wait_for(pilot, lambda p=picker: p.expanded, f"the {role} picker open")
        await pilot.press("down", "enter")  # the draft picker's next model
        panel = app.screen.query_one(ModelsPanel)
        await wait_for(pilot, lambda: panel.draft is MODELS[2], "the other draft chosen")


async def test_the_palettes_screenshot_command_saves_under_the_data_folder():
    from app.config import data_dir

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"screenshot")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Screenshot" in titles(app), "the screenshot's notification")
        assert not [n for n in app._notifications if n.severity == "error"], notes(app)
    (saved,) = (data_dir() / "screenshots").glob("*.svg")
    assert "specdeck" in saved.read_text()


async def test_after_the_run_decode_now_is_blank_and_the_status_is_on_the_run_pane():
    from engine.metrics import StepRecord
    from ipc.events import DoneEvent, StatusEvent, StepEvent

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        as_if_launched(screen)
        step = StepRecord(0, 5, 3, 4, 0.01, 0.02, 0.005, k=5)
        for event in (
            StatusEvent("target", "decode", "decoding"),
            StepEvent(step, (1, 2), " x", 4.0, 0.6, (1.0, 0.9, 0.8), 120.0),
        ):
            screen.post_message(RunEventArrived(event))
        controls = screen.query_one("#controls")
        await wait_for(pilot, lambda: screen.live_run.throughput.now is not None, "a step")
        assert controls.border_subtitle == "target: decode"
        throughput = screen.query_one(ThroughputPane)
        assert "decode now n/a" not in str(Content.from_markup(throughput.render()))
        screen.post_message(RunEventArrived(DoneEvent({"decode_tokens_per_s": 118.0})))
        screen.post_message(RunEventArrived(StatusEvent("run", "done")))
        await wait_for(pilot, lambda: not screen.live_run.busy, "the run's end")
        shown = str(Content.from_markup(throughput.render()))
        assert "decode now n/a" in shown and "decode mean 118.0" in shown
        assert controls.border_subtitle == "done"
        log = [line.message for line in screen.event_log.entries]
        assert "target: decoding" in log  # not `decode decoding`
        drawn = [strip.text.rstrip() for strip in screen.event_log.lines]
        assert any(re.fullmatch(r"\d\d:\d\d:\d\d target: decoding", line) for line in drawn)


async def test_at_80_by_24_every_pane_launch_and_its_key_are_on_screen():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_filled(pilot)
        screen = app.screen
        await wait_for(pilot, lambda: "l Launch" in screen_text(app), "the footer")
        footer = screen_text(app).splitlines()[-1]
        assert "l Launch" in footer and "T D Model" in footer
        whole = screen.region
        for part in ("#launch", "#stop", "#baseline", "#prompt", "#pick-target", "#pick-draft"):
            region = screen.query_one(part).region
            assert region.height and whole.contains_region(region), part
            assert screen.query_one("#sidebar").region.contains_region(region), part
        for pane in ("#devices", "#acceptance", "#throughput", "#output", "#log"):
            assert screen.query_one(pane).content_region.height >= 3, pane


def test_figures_that_do_not_fit_one_line_wrap_between_pairs_never_inside_one():
    from app.widgets.figures import flow

    pairs = [("AL last", "2"), ("mean AL", "3.14"), ("acceptance", "80%")]
    assert flow(pairs, 80) == "AL last [b]2[/b]   mean AL [b]3.14[/b]   acceptance [b]80%[/b]"
    assert flow(pairs, 24) == "AL last [b]2[/b]   mean AL [b]3.14[/b]\nacceptance [b]80%[/b]"
    assert flow(pairs, 12) == "AL last [b]2[/b]\nmean AL [b]3.14[/b]\nacceptance [b]80%[/b]"


def test_the_comparison_says_what_each_figure_is_and_in_words():
    from app.widgets.runs import comparison_rows

    a = {
        "run_id": "a",
        "placement": {"target": ["cuda:0", "cuda:1"], "draft": "cuda:1"},
        "summary": {"mean_acceptance_length": 2.5, "acceptance_rate": 0.61, "wall_s": 1.5},
    }
    rows = {label: (x, y) for label, x, y in comparison_rows(a, {"run_id": "b"})}
    assert rows["placement"] == ("target cuda:0, cuda:1 · draft cuda:1", "n/a")
    assert rows["mean AL"] == ("2.50", "n/a")
    assert rows["acceptance rate"] == ("61%", "n/a")
    assert rows["wall time"] == ("1.50 s", "n/a")
    assert not [label for label in rows if "_" in label]  # words, not the record's keys


async def test_the_output_is_at_full_colour_and_only_the_prompt_is_dimmed():
    from app.widgets.output import OutputPane

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        pane = app.screen.query_one(OutputPane)
        pane.begin("prompt:")
        pane.append(" output")
        await wait_for(pilot, lambda: "prompt: output" in screen_text(app), "the output drawn")
        colours = {}
        for strip in app.screen._compositor.render_strips():
            for segment in strip:
                for word in ("prompt:", "output"):
                    if segment.text.strip() == word:
                        colours[word] = segment.style.color
        # both were dimmed once, drawn as one piece
        assert colours.get("prompt:") != colours.get("output"), "prompt and output drawn alike"
        assert colours["output"] == app.screen.query_one(OutputPane).rich_style.color


async def test_the_dashboard_runs_in_an_ansi_theme():
    """Textual's ANSI themes leave colours to the terminal; the log's level colours follow."""
    app = make_app(theme="ansi-dark")
    async with app.run_test(size=SIZE) as pilot:
        await wait_filled(pilot)
        app.screen.event_log.add("a warning line", "warning")
        await wait_for(pilot, lambda: "a warning line" in screen_text(app), "the line drawn")
