"""The main screen: models, role palette, device cards, run controls and the live panes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Select

from app.board import Board, free_memory
from app.config import data_dir
from app.widgets.controls import BadOption, RunControls
from app.widgets.devices import (
    DeviceCard,
    DeviceGrid,
    DevicesFollowed,
    PlaceRequested,
    ReadingsShown,
    RemoveRequested,
)
from app.widgets.drag import RoleClicked, RoleDragHover, RoleDropped
from app.widgets.models import ModelsChosen, ModelsPanel
from app.widgets.palette import CHIP_LABELS, RolePalette
from app.widgets.telemetry import DeviceHistory
from backends.placement import PlacementError

if TYPE_CHECKING:
    from app.config import Config
    from app.progress import WorkloadProgress
    from app.run_control import AcceptanceFigures, LiveRun, RunningDaemon, ThroughputFigures
    from app.widgets.acceptance import AcceptancePane
    from app.widgets.log import EventLog
    from app.widgets.output import OutputPane
    from app.widgets.throughput import ThroughputPane
    from backends.discovery import Inventory
    from backends.sampler import DeviceSampler
    from engine.catalog import ModelInfo
    from ipc.run_spec import CheckedRun
    from ipc.watch import LiveWatch

CHIP_KEYS = Binding.Group("Chip")  # the footer shows `t d Chip`
MODEL_KEYS = Binding.Group("Model")  # and `T D Model`
COMPACT_FOOTER_BELOW = 130  # columns: the footer drops its spacing below this width
# a step's figures are shown at once if none were this recently, else at the end of the wait:
# steps can come every millisecond, and nobody reads the panes faster than a few times a second
FIGURES_EVERY_S = 0.25


def device_ids(inventory: Inventory) -> set[str]:
    """The ids of an inventory's devices."""
    return {d.id for d in inventory.devices}


class RunEventArrived(Message):
    """A launch outcome or a run event for LiveRun.apply, carried from the launch or run
    thread onto the screen's message queue."""

    def __init__(self, event: object) -> None:
        super().__init__()
        self.event = event


class MainScreen(Screen):
    """Pick models, place roles on devices, launch, and watch the run."""

    AUTO_FOCUS = "DeviceCard"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (130, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    # the footer shows them in this order: what a narrow terminal cuts comes last
    BINDINGS = [
        Binding("l", "launch", "Launch"),
        Binding("s", "stop", "Stop"),
        Binding("t", "choose('target')", "Target chip", group=CHIP_KEYS),
        Binding("d", "choose('draft')", "Draft chip", group=CHIP_KEYS),
        Binding("T,shift+t", "pick_model('target')", "Target model", "T", group=MODEL_KEYS),
        Binding("D,shift+d", "pick_model('draft')", "Draft model", "D", group=MODEL_KEYS),
        Binding("p", "edit_prompt", "Prompt"),
        Binding("k", "edit_k", "k/temp"),
        Binding("b", "toggle_baseline", "Baseline"),
        Binding("r", "runs", "Runs"),
        Binding("u", "unwatch", "Unwatch"),  # shown only while watching another's run
        Binding("c", "focus_cards", "Cards"),
        Binding("escape", "focus_cards", "Cards", show=False),
    ]

    def __init__(
        self,
        config: Config,
        inventory: Inventory,
        sampler: DeviceSampler,
        models: Sequence[ModelInfo] | None,
        model_dirs: Sequence[str] = (),
        refresh_s: float = 1.0,
        follow_run: Callable[[CheckedRun, str], Callable[[object], None]] | None = None,
    ) -> None:
        super().__init__()
        self.follow_run = follow_run  # `--metrics-port`: the exporter follows each run too
        self.config = config
        self.inventory = inventory
        self.sampler = sampler
        self.models = models
        self.model_dirs = tuple(model_dirs)
        self.refresh_s = refresh_s
        self.board = Board.of(inventory.devices)
        self._filled = False  # the parts mounted after the first frame are there
        self._after_fill: list[Callable[[], object]] = []
        self._figures_at = float("-inf")  # when a step's figures were last shown (monotonic)
        self._figures_due: tuple[AcceptanceFigures, ThroughputFigures] | None = None
        self._figures_timer = None  # the wait before showing the due figures

    def compose(self) -> ComposeResult:
        # the breakpoint classes of the size we open at, so the first resize restyles nothing
        self.set_classes(self.size_classes(self.app.size))
        yield Header(show_clock=False)
        with Horizontal(id="body"):
            with VerticalScroll(id="sidebar"):
                yield ModelsPanel(id="models")
                yield RolePalette(id="palette")
                yield RunControls(id="controls")
            with Vertical(id="main"):
                unavailable = [f"{u.backend}: {u.reason}" for u in self.inventory.unavailable]
                yield DeviceGrid(self.sampler, unavailable, self.refresh_s, id="devices")
                # the live panes, the log, the inputs and pickers come after the first frame
                yield Horizontal(id="live")
                yield Horizontal(id="bottom")
        yield Footer(compact=self.app.size.width < COMPACT_FOOTER_BELOW)

    def on_resize(self, event: events.Resize) -> None:
        self.query_one(Footer).compact = event.size.width < COMPACT_FOOTER_BELOW

    def on_mount(self) -> None:
        self._set_titles(
            {
                "#models": "Models",
                "#palette": "Roles: drag, or t/d + ⏎",
                "#controls": "Run",
                "#devices": "Devices",
            }
        )
        self.show_status("idle")
        self.query_one(RolePalette).selected = self.board.selected
        if self.models is not None:
            self.query_one(ModelsPanel).set_models(self.models)
        self.call_after_refresh(self._fill)

    async def _fill(self) -> None:
        """Mount what the first frame need not wait for: live panes, log, inputs, pickers."""
        # their modules load here too, so the first frame does not wait for the imports
        from app.widgets.acceptance import AcceptancePane
        from app.widgets.log import EventLog
        from app.widgets.output import OutputPane
        from app.widgets.throughput import ThroughputPane

        await self.query_one("#live", Horizontal).mount_all(
            [
                DeviceHistory(self.sampler, self.refresh_s, id="history"),
                AcceptancePane(id="acceptance"),
                ThroughputPane(id="throughput"),
            ]
        )
        await self.query_one("#bottom", Horizontal).mount_all(
            [OutputPane(id="output"), EventLog(id="log")]
        )
        for part in (self.query_one(ModelsPanel), self.query_one(RunControls)):
            if not part.is_attached:  # the app is closing: quit came before the parts did
                return
            await part.fill()
        if not self.query("#output") or not self.query("#log"):  # closing, as above
            return
        self._set_titles(
            {
                "#history": "Device history",
                "#acceptance": "Acceptance",
                "#throughput": "Throughput",
                "#output": "Output",
                "#log": "Log",
            }
        )
        log = self.event_log
        log.add(f"{len(self.inventory.devices)} device(s) found")
        for u in self.inventory.unavailable:
            log.add(f"{u.backend} unavailable: {u.reason}", level="debug")
        self._filled = True
        for callback in self._after_fill:
            callback()
        self._after_fill.clear()

    @cached_property
    def live_run(self) -> LiveRun:
        """The run: launched, followed and stopped in plain Python; this screen shows it."""
        from app.run_control import LiveRun  # loads at first use, not before the first frame

        return LiveRun(
            self,
            lambda item: self.post_message(RunEventArrived(item)),
            config=self.config,
            sampler=self.sampler,
            model_dirs=self.model_dirs,
            data_dir=data_dir(),
            follow_run=self.follow_run,
        )

    @property
    def filled(self) -> bool:
        """Whether the parts mounted after the first frame (inputs, pickers, panes) are there."""
        return self._filled

    def _when_filled(self, callback: Callable[[], object]) -> None:
        """Run `callback` now, or once the parts mounted after the first frame are there."""
        if self._filled:
            callback()
        else:
            self._after_fill.append(callback)

    # the panes mounted after the first frame, found by id: their modules load with them
    @property
    def event_log(self) -> EventLog:
        """The event log."""
        return self.query_one("#log")  # type: ignore[return-value]

    @property
    def output_pane(self) -> OutputPane:
        """The generated text."""
        return self.query_one("#output")  # type: ignore[return-value]

    @property
    def acceptance_pane(self) -> AcceptancePane:
        """Acceptance figures."""
        return self.query_one("#acceptance")  # type: ignore[return-value]

    @property
    def throughput_pane(self) -> ThroughputPane:
        """Throughput figures."""
        return self.query_one("#throughput")  # type: ignore[return-value]

    def _set_titles(self, titles: dict[str, str]) -> None:
        for selector, title in titles.items():
            self.query_one(selector).border_title = title

    def size_classes(self, size: Size) -> list[str]:
        """The breakpoint classes Textual gives this screen at `size`."""
        return [
            next(name for edge, name in sorted(points, reverse=True) if dimension >= edge)
            for points, dimension in (
                (self.HORIZONTAL_BREAKPOINTS, size.width),
                (self.VERTICAL_BREAKPOINTS, size.height),
            )
        ]

    # -- models --------------------------------------------------------------------------

    def scan_catalog(self) -> None:
        """Scan the model folders, unless the models were given (the app calls it once the
        first frame is up: the scan's thread would slow that frame down)."""
        if self.models is None:
            self.query_one(ModelsPanel).scan([*self.config.model_dirs, *self.model_dirs])

    @on(ModelsChosen)
    def _on_models_chosen(self, event: ModelsChosen) -> None:
        self._models_changed(event.target, event.draft)

    def _models_changed(self, target: ModelInfo | None, draft: ModelInfo | None) -> None:
        # the catalog's estimate, as the CLI judges a fit (ModelInfo.weight_bytes_on): on GPUs
        # (simulated ones too) and on the CPU; the board picks by the cards
        self.board = self.board.with_models(
            target.resident_bytes(on_cpu=False) if target else None,
            draft.resident_bytes(on_cpu=False, draft=True) if draft else None,
            target.resident_bytes(on_cpu=True) if target else None,
            draft.resident_bytes(on_cpu=True, draft=True) if draft else None,
        )
        self._show_shortfall()

    # -- devices (the device widgets read the sampler; the board follows them) ------------

    @on(DevicesFollowed)
    def _on_devices_followed(self, event: DevicesFollowed) -> None:
        """The board follows the devices there now; a role on a device that has gone comes off."""
        before, now = device_ids(self.inventory), device_ids(event.inventory)
        self.inventory = event.inventory
        stranded = self.board.stranded_roles(self.inventory.devices)
        self.board = self.board.with_devices(self.inventory.devices)
        self._show_board()
        lines = [(f"{d} has gone", "warning") for d in before - now]
        lines += [(f"{d} appeared", "info") for d in now - before]
        for role, device_id in stranded:
            text = f"{CHIP_LABELS[role]} taken off {device_id}: the device has gone"
            self.notify(text, title="device gone", severity="warning", timeout=10)
            lines.append((text, "warning"))
        self._when_filled(lambda: self._log_lines(lines))

    @on(ReadingsShown)
    def _on_readings_shown(self, event: ReadingsShown) -> None:
        """The board judges fits by the free memory the cards show now."""
        self.board = self.board.with_free({d: free_memory(s) for d, s in event.latest.items()})
        self._show_shortfall()
        if self._filled:
            self.live_run.notice_end()  # in case the run's last event was lost

    def _log_lines(self, lines: list[tuple[str, str]]) -> None:
        for text, level in lines:
            self.event_log.add(text, level)

    def _show_board(self) -> None:
        """Redraw the roles on every card, with their daemons' pids, after either changed."""
        grid = self.query_one(DeviceGrid)
        daemons = self.live_run.daemons
        watched = self.live_run.watched  # the cards show the watched run's roles, not ours
        for device in self.inventory.devices:
            card = grid.card(device.id)
            if card is None:
                continue
            placed = []
            if watched:
                placed = [(r, d.pid) for r, d in daemons.items() if device.id in d.device_ids]
            for role in () if watched else self.board.roles_on(device.id):
                daemon = daemons.get(role)
                here = daemon is not None and device.id in daemon.device_ids
                placed.append((role, daemon.pid if here else None))
            card.show_roles(placed)
        self.query_one(RolePalette).selected = self.board.selected
        self._show_shortfall()

    def _show_shortfall(self) -> None:
        """The Roles pane's bottom edge says how much memory the placement still lacks."""
        short = self.board.shortfall()
        self.query_one(RolePalette).border_subtitle = (
            None if short is None else f"{short.what}: {short.missing_bytes / 2**30:.1f} GiB short"
        )

    # -- placing roles -------------------------------------------------------------------

    def place(self, role: str, device_id: str, source: str | None = None) -> bool:
        """Place (or move) a role; a refusal is a notification saying why."""
        if self.live_run.busy:
            self.notify("stop the run before changing the placement", severity="warning")
            return False
        try:
            if source is None:
                self.board = self.board.place(role, device_id)
            else:
                self.board = self.board.move(role, source, device_id)
        except PlacementError as exc:
            self.notify(str(exc), title=f"{CHIP_LABELS[role]} not placed", severity="error")
            line = f"{role} refused on {device_id}: {exc}"
            self._when_filled(lambda: self.event_log.add(line, "warning"))
            return False
        self._show_board()
        lacking = self.board.missing()
        if lacking:  # placed, but the set does not fit yet: say what would make it fit
            title = f"{CHIP_LABELS[role]} placed; not enough memory yet"
            self.notify(lacking, title=title, severity="warning", timeout=10)
            self._when_filled(lambda: self.event_log.add(lacking, "warning"))
        return True

    def remove(self, role: str, device_id: str) -> None:
        """Take a role off a card."""
        if self.live_run.busy:
            self.notify("stop the run before changing the placement", severity="warning")
            return
        self.board = self.board.remove(role, device_id)
        self._show_board()

    def action_choose(self, role: str) -> None:
        """Choose the chip the keyboard places."""
        self.board = self.board.select(role)
        self.query_one(RolePalette).selected = role

    def action_focus_cards(self) -> None:
        """Move the focus to the first device card."""
        cards = self.query(DeviceCard)
        if cards:
            focused = self.focused
            (focused if isinstance(focused, DeviceCard) else cards.first()).focus()

    @on(PlaceRequested)
    def _on_place_requested(self, event: PlaceRequested) -> None:
        self.place(self.board.selected, event.device_id)

    @on(RemoveRequested)
    def _on_remove_requested(self, event: RemoveRequested) -> None:
        roles = self.board.roles_on(event.device_id)
        if not roles:
            self.notify(f"nothing is placed on {event.device_id}", severity="warning")
            return
        role = self.board.selected if self.board.selected in roles else roles[-1]
        self.remove(role, event.device_id)

    @on(RoleClicked)
    def _on_role_clicked(self, event: RoleClicked) -> None:
        self.action_choose(event.role)

    @on(RoleDragHover)
    def _on_drag_hover(self, event: RoleDragHover) -> None:
        card = self.query_one(DeviceGrid).card(event.device_id) if event.device_id else None
        if card is None:
            return
        board = self.board
        if event.source is not None:
            board = board.remove(event.role, event.source)
        card.drag_over(
            None if event.source == event.device_id else board.why_not(event.role, event.device_id)
        )

    @on(RoleDropped)
    def _on_role_dropped(self, event: RoleDropped) -> None:
        if event.destination is None:
            if event.source is not None:  # dragged off its card: removed
                self.remove(event.role, event.source)
            return
        if event.source == event.destination:
            return
        self.action_choose(event.role)
        self.place(event.role, event.destination, event.source)

    # -- run controls --------------------------------------------------------------------

    def action_pick_model(self, role: str) -> None:
        """Open the target or draft model picker."""

        def open_picker() -> None:
            picker = self.query_one(f"#pick-{role}", Select)
            picker.focus()
            picker.expanded = True

        self._when_filled(open_picker)

    def action_edit_prompt(self) -> None:
        self._when_filled(lambda: self.query_one("#prompt", Input).focus())

    def action_edit_k(self) -> None:
        self._when_filled(lambda: self.query_one("#k", Input).focus())

    def action_toggle_baseline(self) -> None:
        self._when_filled(lambda: self.query_one("#baseline").toggle())

    def action_runs(self) -> None:
        from app.screens.runs import RunsScreen

        self.app.push_screen(RunsScreen(watch=self.watch_run))

    def watch_run(self, live: LiveWatch) -> None:
        """Fill the live panes from a run another process started (read-only)."""
        self._when_filled(lambda: self.live_run.watch(live))

    def action_unwatch(self) -> None:
        """Stop watching another process's run; it goes on."""
        self.live_run.unwatch()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "unwatch":  # the footer offers it only while a run is watched
            return "live_run" in self.__dict__ and self.live_run.watched
        return True

    @on(Input.Submitted)
    def _on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_focus_cards()

    @on(Button.Pressed, "#launch")
    def _on_launch_pressed(self) -> None:
        self.action_launch()

    @on(Button.Pressed, "#stop")
    def _on_stop_pressed(self) -> None:
        self.action_stop()

    def action_launch(self) -> None:
        """Check everything the user chose, then start the run through the daemons."""
        self._when_filled(self._launch)

    def _launch(self) -> None:
        try:
            options = self.query_one(RunControls).options()
        except BadOption as exc:
            self.notify(str(exc), title="cannot launch", severity="error")
            return
        panel = self.query_one(ModelsPanel)
        target, draft = panel.target, panel.draft
        if target is None or draft is None:
            self.notify("choose a target model and a draft model first", severity="error")
            return
        try:
            placement = self.board.placement()
        except PlacementError as exc:
            self.notify(str(exc), title="cannot launch", severity="error")
            return
        from ipc.run_spec import RunSpec

        def spec() -> RunSpec:  # on the launch's thread: a suite or a file is read here
            from app.run_args import workload_prompts

            prompts, ids, source = workload_prompts(
                prompt=options.prompt if options.source == "prompt" else None,
                prompts_file=options.prompts_file,
                suite=None if options.source in ("prompt", "file") else options.source,
                n=options.n,
                file_option="prompts file",
            )
            return RunSpec(  # the folders picked: the check names them as the catalog does
                target_model=str(target.path),
                draft_model=str(draft.path),
                target=placement.target,
                draft=placement.draft,
                mode=placement.mode,
                k=options.k,
                temperature=options.temperature,
                prompts=prompts,
                max_new_tokens=options.max_new_tokens,
                baseline=options.baseline,
                prompt_ids=ids,
                prompt_source=source,
                n=options.n,
                repeat=options.repeat,
                duration=options.duration,
            )

        self.live_run.launch(spec, self.inventory)

    def action_stop(self) -> None:
        """Stop the run going on (its daemons end)."""
        self.live_run.stop()

    @on(RunEventArrived)
    def _on_run_event(self, message: RunEventArrived) -> None:
        self._when_filled(lambda: self.live_run.apply(message.event))

    # -- what the run shows (app.run_control.RunView) ----------------------------------------

    def show_status(self, text: str) -> None:
        """What the run is doing, on the Run pane's bottom edge."""
        self.query_one(RunControls).border_subtitle = text

    def add_log(self, text: str, level: str = "info", role: str = "") -> None:
        self.event_log.add(text, level, role)

    def show_figures(self, acceptance: AcceptanceFigures, throughput: ThroughputFigures) -> None:
        self._figures_due = None  # these replace any step's figures still waiting
        self.acceptance_pane.figures = acceptance
        self.throughput_pane.figures = throughput

    def step_figures(self, acceptance: AcceptanceFigures, throughput: ThroughputFigures) -> None:
        now = time.monotonic()
        wait = self._figures_at + FIGURES_EVERY_S - now
        if wait <= 0 and self._figures_timer is None:
            self._figures_at = now
            self.show_figures(acceptance, throughput)
            return
        self._figures_due = (acceptance, throughput)
        if self._figures_timer is None:
            self._figures_timer = self.set_timer(max(wait, 0.0), self._show_due_figures)

    def _show_due_figures(self) -> None:
        self._figures_timer = None
        if self._figures_due is not None:
            self._figures_at = time.monotonic()
            self.show_figures(*self._figures_due)

    def begin_output(self, prompt: str) -> None:
        self.output_pane.begin(prompt)

    def append_output(self, text: str) -> None:
        self.output_pane.append(text)

    def finish_output(self, text: str) -> None:
        self.output_pane.finish(text)

    def show_running(self, running: bool) -> None:
        self.query_one(RunControls).set_running(running)
        self.refresh_bindings()  # Unwatch comes and goes with a watched run

    def show_daemons(self, daemons: Mapping[str, RunningDaemon]) -> None:
        self._show_board()

    def show_workload(self, progress: WorkloadProgress | None) -> None:
        self.query_one(RunControls).show_workload(progress)
