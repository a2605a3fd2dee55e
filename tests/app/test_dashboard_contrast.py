"""Every theme's rendered colours are readable: text against its background at least 4.5:1 and
borders and bars at least 3:1 (WCAG 2.1, 1.4.3 and 1.4.11), judged on the cells the compositor
draws, not on the theme's table."""

import json
import unicodedata
from collections import Counter

import pytest

from app.screens.main import RunEventArrived
from app.widgets.controls import RunControls
from engine.metrics import StepRecord
from ipc.events import DaemonEvent, LogEvent, StatusEvent, StepEvent
from tests.app.dashboard_fakes import as_if_launched, make_app, wait_filled, wait_for
from themes.specdeck import THEMES

TEXT_CONTRAST = 4.5  # WCAG 1.4.3: text
EDGE_CONTRAST = 3.0  # WCAG 1.4.11: borders, bars and other graphics one needs to see


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance, written out here so the product's own copy is not judged by
    itself."""
    linear = [
        v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (c / 255 for c in rgb)
    ]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: tuple[int, int, int], other: tuple[int, int, int]) -> float:
    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def needed(char: str) -> float | None:
    """The contrast a drawn character needs: text 4.5, box drawing and blocks 3, a blank none."""
    if char.isspace():
        return None
    if 0x2500 <= ord(char) <= 0x25FF:  # box drawing, blocks, shapes: borders, bars, swatches
        return EDGE_CONTRAST
    return TEXT_CONTRAST if unicodedata.category(char)[0] in "LNPS" else None


def rgb(colour) -> tuple[int, int, int]:
    true = colour.get_truecolor()
    return true.red, true.green, true.blue


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def too_faint(app) -> Counter:
    """(text, foreground, background, ratio) of every run of cells drawn below its contrast;
    cells of a disabled control are left out (WCAG exempts inactive components)."""
    faint: Counter = Counter()
    screen = app.screen
    for y, strip in enumerate(screen._compositor.render_strips()):
        x = 0
        for segment in strip:
            style, text = segment.style, segment.text
            for i, char in enumerate(text):
                need = needed(char)
                if need is None:
                    continue
                assert style.color is not None and style.bgcolor is not None, (text, style)
                fg, bg = rgb(style.color), rgb(style.bgcolor)
                if style.reverse:
                    fg, bg = bg, fg
                ratio = contrast(fg, bg)
                if ratio < need:
                    widget, _ = screen.get_widget_at(x + i, y)
                    if any(getattr(node, "disabled", False) for node in widget.ancestors_with_self):
                        continue
                    faint[(text.strip(), hex_colour(fg), hex_colour(bg), round(ratio, 2))] += 1
            x += segment.cell_length
    return faint


async def _a_run_with_everything_on_screen(pilot) -> None:
    """Roles placed, a run streaming, log lines of every level, toasts, two drop hints."""
    app = pilot.app
    await wait_filled(pilot)
    await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter")
    screen = app.screen
    await wait_for(pilot, lambda: screen.board.draft == "sim-hip:0", "the draft on sim-hip:0")
    as_if_launched(screen)  # the events come as the runner sends them
    screen.query_one(RunControls).set_running(True)  # Stop enabled, Launch not
    events = [
        DaemonEvent("target", 4242, ("sim-cuda:0",)),
        StatusEvent("target", "decode", "decoding"),
        LogEvent("warning", "a warning line", "draft"),
        LogEvent("error", "an error line", "target"),
        LogEvent("debug", "a debug line"),
    ]
    for i in range(6):
        step = StepRecord(i, 5, 3, 4, 0.004, 0.011, 0.002, k=5)
        events.append(StepEvent(step, (1,), " fib(n - 1)", 4.0, 0.6, (0.9, 0.7, 0.5), 230.5))
    for event in events:
        screen.post_message(RunEventArrived(event))
    for severity in ("information", "warning", "error"):
        app.notify(f"a {severity} toast", title=severity, severity=severity, timeout=60)
    grid = screen.query_one("#devices")
    grid.card("cpu").drag_over(None)
    grid.card("sim-cuda:1").drag_over("refused")
    await wait_for(pilot, lambda: screen.live_run.throughput.now is not None, "the run's figures")
    await pilot.pause()


async def _idle_with_the_prompt_focused(pilot) -> None:
    """Nothing placed, Launch enabled, the prompt being edited."""
    await wait_filled(pilot)
    await pilot.press("p")
    await wait_for(pilot, lambda: pilot.app.focused.id == "prompt", "the prompt focused")


async def _two_runs_compared(pilot) -> None:
    from app.config import data_dir

    for run_id, al in (("20260101-000000-aaaa", 2.5), ("20260101-000001-bbbb", 3.5)):
        folder = data_dir() / "runs" / run_id
        folder.mkdir(parents=True)
        run = {
            "run_id": run_id,
            "status": "done",
            "target_model": "t",
            "draft_model": "d",
            "summary": {"mean_acceptance_length": al},
        }
        (folder / "run.json").write_text(json.dumps(run))
    await wait_filled(pilot)
    await pilot.press("r")
    await wait_for(
        pilot,
        lambda: getattr(pilot.app.screen.query_one("#runs-table"), "row_count", 0) == 2,
        "two rows",
    )
    await pilot.press("space", "down", "space")
    await pilot.pause()


async def _two_runs_plotted(pilot) -> None:
    """Two recorded runs with steps and device samples, overlaid in the runs view's plots."""
    import time

    from app.config import data_dir
    from app.widgets.run_plots import RunPlots
    from backends.base import Sample
    from tests.app.recorded import new_record

    for k in (3, 5):
        recorder = new_record(data_dir(), target="sim-cuda:0", draft="sim-cuda:1", k=k)
        for i, phase in enumerate(("load", "prefill", "decode", "decode", "decode", "idle")):
            for n, device in enumerate(("cpu", "sim-cuda:0", "sim-cuda:1")):
                sample = Sample(
                    device, time.time() + i, utilization_percent=10.0 * (i + n), phase=phase
                )
                recorder.sample(sample)
            recorder.step(StepRecord(i, k, i % k, i % k + 1, 0.01, 0.02, k=k), 2.0)
        recorder.finish({"mean_acceptance_length": 2.0})
    await wait_filled(pilot)
    await pilot.press("r")
    await wait_for(pilot, lambda: pilot.app.screen.query(RunPlots), "the runs view")
    plots = pilot.app.screen.query_one(RunPlots)
    await wait_for(pilot, lambda: len(plots.shown) == 1, "a run plotted")
    await pilot.press("space", "down", "space")
    await wait_for(pilot, lambda: len(plots.shown) == 2, "two runs overlaid")
    await pilot.pause()


@pytest.mark.parametrize("theme", [t.name for t in THEMES])
@pytest.mark.parametrize(
    ("what", "size", "prepare"),
    [
        ("idle", (160, 48), _idle_with_the_prompt_focused),
        ("a run going on", (160, 48), _a_run_with_everything_on_screen),
        ("a run going on, 80x24", (80, 24), _a_run_with_everything_on_screen),
        ("the runs view", (120, 40), _two_runs_compared),
        ("the runs view's plots", (120, 40), _two_runs_plotted),
    ],
)
async def test_every_theme_draws_readable_colours(theme, what, size, prepare):
    app = make_app(theme=theme)
    async with app.run_test(size=size) as pilot:
        await prepare(pilot)
        faint = too_faint(app)
    worst = sorted(faint, key=lambda item: item[3])[:12]
    assert not faint, f"{theme}, {what}: too faint (text, fg, bg, ratio): {worst}"


async def test_the_check_sees_a_faint_colour():
    """A theme whose text is grey on grey is caught: the check can fail."""
    from textual.theme import Theme

    from themes.specdeck import DARK, VARIABLE_DEFAULTS

    grey = Theme(
        name="grey-on-grey",
        foreground="#777777",
        background="#666666",
        primary=DARK.primary,
        dark=True,
        variables=dict(VARIABLE_DEFAULTS),
    )
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        app.register_theme(grey)
        app.theme = grey.name
        await wait_filled(pilot)
        await pilot.pause()
        assert too_faint(app)
