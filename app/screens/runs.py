"""The runs view: run records (those going on now marked live), two of them compared side by
side, and a live one opened in the main screen's panes (watched, read-only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from app.widgets.run_plots import RunPlots
from app.widgets.runs import RunComparison, RunsTable

if TYPE_CHECKING:
    from ipc.watch import LiveWatch

LIVE_REFRESH_S = 2.0  # how often the view looks for runs that started or ended


class RunsScreen(Screen):
    """Every run record under the data folder; mark two with space to compare them; open a
    live one with w to watch it in the main screen."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("w", "watch", "Watch live"),
        Binding("f5", "reload", "Reload"),
    ]

    def __init__(self, watch: Callable[[LiveWatch], object] | None = None) -> None:
        super().__init__()
        self._watch = watch  # fills the main screen's panes from a live run
        self.live: dict[str, LiveWatch] = {}  # run id -> its watch endpoint, for runs going on

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            yield RunsTable(id="runs-table")
            yield Static("", id="runs-hint")
            with Horizontal(id="runs-detail"):
                yield RunComparison("", id="runs-compare")
                yield RunPlots(id="runs-plot")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs-table").border_title = "Runs"
        self.query_one("#runs-compare").border_title = "Compare"
        self.query_one("#runs-plot").border_title = "Plots"
        self.set_interval(LIVE_REFRESH_S, self._look_for_live)
        self.action_reload()

    def action_reload(self) -> None:
        """Read the run records again."""
        self._load()

    @work(thread=True, exclusive=True, group="records")
    def _load(self) -> None:
        from app.config import data_dir
        from ipc.records import list_runs
        from ipc.watch import live_runs

        try:
            live = live_runs(data_dir())
            runs = list_runs(data_dir())
        except Exception as exc:  # an unreadable folder is a message, not a crash
            self.app.call_from_thread(self.notify, f"run records: {exc}", severity="error")
            runs, live = [], []
        self.app.call_from_thread(self._show, runs, live)

    @work(thread=True, exclusive=True, group="live")
    def _look_for_live(self) -> None:
        """Mark the runs going on now; read the records again when one started or ended."""
        from app.config import data_dir
        from ipc.watch import live_runs

        try:
            live = live_runs(data_dir())
        except Exception:  # the next look may do better; the records' reload says why
            return
        if {w.run_id for w in live} != set(self.live):
            self.app.call_from_thread(self.action_reload)

    def _show(self, runs: list, live: list[LiveWatch]) -> None:
        self.live = {w.run_id: w for w in live}
        self.query_one(RunsTable).show(runs, live=set(self.live))
        if not runs:
            hint = "no runs recorded yet"
        else:
            hint = "space: mark two runs, c: compare"
            if live:
                hint += f", w: watch a live run ({len(live)} going on)"
        self.query_one("#runs-hint", Static).update(hint)

    def action_watch(self) -> None:
        """Open the live run under the cursor in the main screen's panes, read-only."""
        table = self.query_one(RunsTable)
        run_id = table.current_run_id
        live = self.live.get(run_id or "")
        if live is None:
            self.notify(
                f"run {run_id} is not going on: only live runs can be watched"
                if run_id
                else "no run is selected",
                severity="warning",
            )
            return
        if self._watch is None:
            self.notify("this view cannot open a run", severity="warning")
            return
        self.app.pop_screen()
        self._watch(live)

    def action_mark(self) -> None:
        marked = self.query_one(RunsTable).toggle_mark()
        self.query_one("#runs-hint", Static).update(f"marked: {', '.join(marked) or 'none'}")
        if len(marked) == 2:
            self.action_compare()

    @on(DataTable.RowHighlighted)
    def _on_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.query_one(RunPlots).show_runs([str(event.row_key.value)])

    @on(DataTable.RowSelected)
    def _on_row_selected(self) -> None:
        self.action_mark()

    def action_compare(self) -> None:
        """Compare the two marked runs."""
        marked = self.query_one(RunsTable).marked
        if len(marked) != 2:
            self.notify("mark two runs with space first", severity="warning")
            return
        from app.config import data_dir
        from ipc.records import RunNotFound, load_run

        try:
            a, b = (load_run(data_dir(), run_id) for run_id in marked)
        except RunNotFound as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one(RunComparison).compare(a, b)
        self.query_one(RunPlots).show_runs(marked)
