"""The main screen: models, role palette, device cards, run controls and the live panes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Select

from app.board import Board, free_memory
from app.widgets.controls import BadOption, RunControls, RunOptions
from app.widgets.devices import DeviceCard, DeviceGrid, PlaceRequested, RemoveRequested, RoleOnCard
from app.widgets.drag import RoleClicked, RoleDragHover, RoleDropped
from app.widgets.models import ModelsChosen, ModelsPanel
from app.widgets.palette import CHIP_LABELS, RolePalette
from app.widgets.telemetry import DeviceHistory, utilization_series
from backends.cpu import resident_bytes
from backends.placement import Placement, PlacementError

if TYPE_CHECKING:
    from app.config import Config
    from app.widgets.acceptance import AcceptanceFigures, AcceptancePane
    from app.widgets.log import EventLog
    from app.widgets.output import OutputPane
    from app.widgets.throughput import ThroughputFigures, ThroughputPane
    from backends.discovery import Inventory
    from backends.sampler import DeviceSampler
    from engine.catalog import ModelInfo

RUN_OVER = ("done", "stopped", "failed")
CHIP_KEYS = Binding.Group("Chip")  # the footer shows `t d Chip`
MODEL_KEYS = Binding.Group("Model")  # and `T D Model`
COMPACT_FOOTER_BELOW = 130  # columns: the footer drops its spacing below this width


def device_ids(inventory: Inventory) -> set[str]:
    """The ids of an inventory's devices."""
    return {d.id for d in inventory.devices}


class RunEventArrived(Message):
    """A run event, carried from the runner's thread onto the screen's message queue."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class DevicesChanged(Message):
    """The sampler's device list changed (GPUs discovered after the first frame, a device
    gone or come); posted from the sampler thread, which post_message allows."""


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
    ) -> None:
        super().__init__()
        self.config = config
        self.inventory = inventory
        self.sampler = sampler
        self.models = models
        self.model_dirs = tuple(model_dirs)
        self.refresh_s = refresh_s
        self.board = Board.of(inventory.devices)
        self.handle: Any = None  # the ipc.runner.RunHandle of the run going on
        self.daemons: dict[str, tuple[int, tuple[str, ...]]] = {}  # role -> (pid, device ids)
        # the live figures come with their panes, after the first frame
        self.acceptance: AcceptanceFigures | None = None
        self.throughput: ThroughputFigures | None = None
        self._filled = False  # the parts mounted after the first frame are there
        self._after_fill: list[Callable[[], object]] = []

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
                yield DeviceGrid(self.inventory.devices, unavailable, id="devices")
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
        self._status("idle")
        self.query_one(RolePalette).selected = self.board.selected
        if self.models is not None:
            self._catalog_loaded(self.models)
        self.refresh_telemetry()
        self.set_interval(self.refresh_s, self.refresh_telemetry)
        self.sampler.on_devices_changed(lambda: self.post_message(DevicesChanged()))
        self.call_after_refresh(self._fill)

    async def _fill(self) -> None:
        """Mount what the first frame need not wait for: live panes, log, inputs, pickers."""
        # their modules load here too, so the first frame does not wait for the imports
        from app.widgets.acceptance import AcceptanceFigures, AcceptancePane
        from app.widgets.log import EventLog
        from app.widgets.output import OutputPane
        from app.widgets.throughput import ThroughputFigures, ThroughputPane

        self.acceptance, self.throughput = AcceptanceFigures(), ThroughputFigures()
        await self.query_one("#live", Horizontal).mount_all(
            [
                DeviceHistory(self.inventory.devices, id="history"),
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
        self.refresh_telemetry()
        for callback in self._after_fill:
            callback()
        self._after_fill.clear()

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

    # -- catalog -------------------------------------------------------------------------

    def scan_catalog(self) -> None:
        """Scan the model folders, unless the models were given (the app calls it once the
        first frame is up: the scan's thread would slow that frame down)."""
        if self.models is None:
            self._load_catalog()

    @work(thread=True, exclusive=True, group="catalog")
    def _load_catalog(self) -> None:
        """Scan the model folders off the UI thread."""
        from engine.catalog import list_models

        dirs = [*self.config.model_dirs, *self.model_dirs]
        try:
            found = list_models(dirs)
        except Exception as exc:  # a broken cache folder must not take the dashboard down
            self.app.call_from_thread(self.notify, f"model catalog: {exc}", severity="error")
            found = []
        self.app.call_from_thread(self._catalog_loaded, found)

    def _catalog_loaded(self, models: Sequence[ModelInfo]) -> None:
        self.models = tuple(models)
        panel = self.query_one(ModelsPanel)
        panel.set_models(self.models)
        self._models_changed(panel.target, panel.draft)

    @on(ModelsChosen)
    def _on_models_chosen(self, event: ModelsChosen) -> None:
        self._models_changed(event.target, event.draft)

    def _models_changed(self, target: ModelInfo | None, draft: ModelInfo | None) -> None:
        # the catalog's estimate, as the CLI judges a fit (ModelInfo.weight_bytes_on): on GPUs
        # (simulated ones too) and on the CPU; the board picks by the cards
        self.board = self.board.with_models(
            *(m.resident_bytes(on_cpu=False) if m else None for m in (target, draft)),
            *(m.resident_bytes(on_cpu=True) if m else None for m in (target, draft)),
        )
        self._show_shortfall()

    # -- telemetry -----------------------------------------------------------------------

    def on_devices_changed(self, _: DevicesChanged) -> None:
        self.refresh_telemetry()  # new cards at once, not at the next tick

    def refresh_telemetry(self) -> None:
        """Show the sampler's latest readings on every card and in the history pane."""
        if self.sampler.inventory is not self.inventory:
            self._follow_devices(self.sampler.inventory)
        grid = self.query_one(DeviceGrid)
        history = self.query_one(DeviceHistory) if self._filled else None
        free: dict[str, int | None] = {}
        for device in self.inventory.devices:
            samples = self.sampler.history(device.id)
            latest = samples[-1] if samples else None
            free[device.id] = free_memory(latest)
            card = grid.card(device.id)
            if card is None:
                continue
            card.show(latest, tuple(utilization_series(samples)))
            if history is not None:
                history.show(device.id, samples)
            card.roles = self._roles_on(device.id, latest)
        self.board = self.board.with_free(free)
        self._show_shortfall()
        if self.handle is not None and getattr(self.handle, "finished", False):
            self._run_over(getattr(self.handle, "state", "done"))  # in case an event was lost

    def _follow_devices(self, inventory: Inventory) -> None:
        """Cards follow the devices there now; a role on a device that has gone comes off."""
        stranded = self.board.stranded_roles(inventory.devices)
        before, self.inventory = self.inventory, inventory
        self.board = self.board.with_devices(inventory.devices)
        self.query_one(DeviceGrid).show_devices(inventory.devices)
        self._when_filled(lambda: self.query_one(DeviceHistory).show_devices(inventory.devices))
        lines = [(f"{d} has gone", "warning") for d in device_ids(before) - device_ids(inventory)]
        lines += [(f"{d} appeared", "info") for d in device_ids(inventory) - device_ids(before)]
        for role, device_id in stranded:
            text = f"{CHIP_LABELS[role]} taken off {device_id}: the device has gone"
            self.notify(text, title="device gone", severity="warning", timeout=10)
            lines.append((text, "warning"))
        self._when_filled(lambda: self._log_lines(lines))

    def _log_lines(self, lines: list[tuple[str, str]]) -> None:
        for text, level in lines:
            self.event_log.add(text, level)

    def _roles_on(self, device_id: str, latest: Any) -> tuple[RoleOnCard, ...]:
        device = self.board.devices.get(device_id)
        roles = []
        for role in self.board.roles_on(device_id):
            pid, memory, resident = None, None, False
            if role in self.daemons and device_id in self.daemons[role][1]:
                pid = self.daemons[role][0]
                for process in getattr(latest, "processes", ()) or ():
                    if process.pid == pid:
                        memory = process.memory_bytes
                if memory is None and device is not None and device.runs_on_host:
                    # no per-device figure where the work runs on the host: its host memory
                    memory, resident = resident_bytes(pid), True
            roles.append(RoleOnCard(role, pid, memory, resident))
        return tuple(roles)

    def _show_board(self) -> None:
        """Redraw the roles on every card after the board changed."""
        grid = self.query_one(DeviceGrid)
        for device in self.inventory.devices:
            card = grid.card(device.id)
            if card is not None:
                card.roles = self._roles_on(device.id, self.sampler.latest(device.id))
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
        if self.handle is not None:
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
        if self.handle is not None:
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

        self.app.push_screen(RunsScreen())

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
        if self.handle is not None:
            self.notify("a run is already going on; stop it first", severity="warning")
            return
        try:
            options = self.query_one(RunControls).options()
        except BadOption as exc:
            self.notify(str(exc), title="cannot launch", severity="error")
            return
        panel = self.query_one(ModelsPanel)
        target, draft = panel.target, panel.draft
        problem = None
        if target is None or draft is None:
            problem = "choose a target model and a draft model first"
        elif (
            target.tokenizer_fingerprint
            and draft.tokenizer_fingerprint
            and target.tokenizer_fingerprint != draft.tokenizer_fingerprint
        ):
            problem = f"the tokenizers of {target.name} and {draft.name} differ"
        elif target.problem or draft.problem:
            broken = target if target.problem else draft
            problem = f"{broken.name} cannot load: {broken.problem}"
        else:  # the check the command line makes, with the numbers
            from app.run_options import run_context_problem

            problem = run_context_problem(
                target, draft, options.prompt, options.max_new_tokens, options.k, "max new tokens"
            )
        if problem:
            self.notify(problem, title="cannot launch", severity="error")
            return
        try:
            placement = self.board.placement()
        except PlacementError as exc:
            self.notify(str(exc), title="cannot launch", severity="error")
            return
        self.start(placement, target, draft, options)

    def start(
        self, placement: Placement, target: ModelInfo, draft: ModelInfo, options: RunOptions
    ) -> None:
        """Hand the run to ipc.runner; its events come back as RunEventArrived messages."""
        log = self.event_log
        try:
            from ipc.runner import RunRequest, start_run
        except ImportError as exc:
            self.notify(f"the run launcher is not available: {exc}", severity="error")
            log.add(f"cannot launch: ipc.runner is not available ({exc})", "error")
            return
        from app.run_options import DEFAULT_SEED

        trusted = set(self.config.trust_remote_code)
        request = RunRequest(
            target_model=str(target.path),
            draft_model=str(draft.path),
            placement=placement,
            mode=placement.mode,
            k=options.k,
            temperature=options.temperature,
            seed=DEFAULT_SEED,
            prompt=options.prompt,
            max_new_tokens=options.max_new_tokens,
            baseline=options.baseline,
            trust_remote_code=bool(trusted & {target.name, str(target.path)}),
            target_name=target.name,  # records name models as the command line does
            draft_name=draft.name,
        )
        screen = self

        def on_event(event: Any) -> None:  # called from the runner's thread
            screen.post_message(RunEventArrived(event))

        from app.config import data_dir

        try:
            self.handle = start_run(
                request,
                inventory=self.inventory,
                backend_python=dict(self.config.backend_python),
                sampler=self.sampler,
                on_event=on_event,
                data_dir=data_dir(),
                config_path=str(self.config.path) if self.config.path.exists() else None,
            )
        except Exception as exc:  # bad input or a daemon that cannot start: say so, go on
            self.handle = None
            self.notify(str(exc) or type(exc).__name__, title="launch failed", severity="error")
            log.add(f"launch failed: {exc}", "error")
            return
        from app.widgets.acceptance import AcceptanceFigures
        from app.widgets.throughput import ThroughputFigures

        self.daemons = {}
        self.acceptance, self.throughput = AcceptanceFigures(), ThroughputFigures()
        self.acceptance_pane.figures = self.acceptance
        self.throughput_pane.figures = self.throughput
        self.output_pane.begin(options.prompt)
        self.query_one(RunControls).set_running(True)
        where = f"target on {', '.join(placement.target)}, draft on {placement.draft}"
        log.add(f"launched {target.name} + {draft.name} ({placement.mode}; {where})")
        self._status(f"starting run {getattr(self.handle, 'run_id', '')}")

    def action_stop(self) -> None:
        """Stop the run going on (its daemons end)."""
        if self.handle is None:
            self.notify("no run is going on", severity="warning")
            return
        self._status("stopping…")
        self._stop_run(self.handle)

    @work(thread=True, group="stop")
    def _stop_run(self, handle: Any) -> None:
        """Stop a run off the UI thread: daemons may take a moment to end."""
        try:
            handle.stop()
        except Exception as exc:  # already gone is fine; anything else is reported
            self.app.call_from_thread(self.notify, f"stop: {exc}", severity="warning")

    # -- run events ----------------------------------------------------------------------

    @on(RunEventArrived)
    def _on_run_event(self, message: RunEventArrived) -> None:
        self._when_filled(lambda: self._show_event(message.event))

    def _show_event(self, event: Any) -> None:
        kind = type(event).__name__
        log = self.event_log
        if kind == "StepEvent":
            step = event.step
            self.acceptance = self.acceptance.after_step(
                step.committed,
                step.k or step.drafted,
                event.mean_acceptance_length,
                event.acceptance_rate,
                tuple(event.per_position_acceptance),
            )
            self.throughput = self.throughput.after_step(
                step.committed,
                step.draft_s,
                step.verify_s,
                step.transport_s,
                event.decode_tokens_per_s,
            )
            self.acceptance_pane.figures = self.acceptance
            self.throughput_pane.figures = self.throughput
            self.output_pane.append(event.text)
        elif kind == "TokenEvent":
            if event.decode_tokens_per_s is not None:
                self._status(f"baseline: {event.new_tokens} tokens")
        elif kind == "StatusEvent":
            from app.widgets.log import status_text  # loaded with the log, after the first frame

            log.add(status_text(event.state, event.text), role=event.role)
            self._status(f"{event.role}: {event.state}")
            if event.role == "run" and event.state in RUN_OVER:
                self._run_over(event.state)
        elif kind == "LogEvent":
            log.add(event.text, level=event.level, role=event.role)
        elif kind == "ErrorEvent":
            died = "" if event.exit_status is None else f" (exit status {event.exit_status})"
            text = f"{event.text}{died}"
            log.add(text, level="error", role=event.role)
            self.notify(text, title=f"{event.role} failed", severity="error", timeout=10)
        elif kind == "DaemonEvent":
            self.daemons[event.role] = (event.pid, tuple(event.device_ids))
            log.add(f"daemon pid {event.pid} on {', '.join(event.device_ids)}", role=event.role)
            self._show_board()
        elif kind == "DoneEvent":
            self._done(event.result)

    def _done(self, result: dict) -> None:
        baseline = (result.get("baseline") or {}).get("decode_tokens_per_s")
        mean = result.get("decode_tokens_per_s", self.throughput.mean)
        self.throughput = replace(self.throughput, mean=mean, baseline=baseline)
        self.throughput_pane.figures = self.throughput
        if result.get("output_text") is not None:  # the record's text, should a piece be missing
            self.output_pane.finish(result["output_text"])
        al = result.get("mean_acceptance_length")
        tps = result.get("decode_tokens_per_s")
        summary = f"done: {result.get('new_tokens', '?')} tokens"
        if al is not None:
            summary += f", mean AL {al:.2f}"
        if tps is not None:
            summary += f", {tps:.1f} tok/s"
        if result.get("speedup") is not None:
            summary += f", speedup {result['speedup']:.2f}×"
        self.event_log.add(summary)
        self.notify(summary.removeprefix("done: "), title="run done")

    def _run_over(self, state: str) -> None:
        if self.handle is None:
            return
        self.handle = None
        self.daemons = {}
        self.query_one(RunControls).set_running(False)
        self._status(state)
        self._show_board()
        if self.throughput is not None:  # no step is going on any more: no rate "now"
            self.throughput = replace(self.throughput, now=None)
            self._when_filled(self._show_throughput)

    def _show_throughput(self) -> None:
        self.throughput_pane.figures = self.throughput

    def _status(self, text: str) -> None:
        """What the run is doing, on the Run pane's bottom edge."""
        self.query_one(RunControls).border_subtitle = text

    def stop_everything(self, timeout_s: float = 15.0) -> None:
        """Stop the run going on and wait for its daemons to end (used when quitting)."""
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                handle.stop()
                handle.wait(timeout_s)
            except Exception:  # quitting goes on whatever the daemons say
                pass
