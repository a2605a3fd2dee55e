"""The runs view: past run records, and two of them compared side by side."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from app.widgets.runs import RunComparison, RunsTable


class RunsScreen(Screen):
    """Every run record under the data folder; mark two with space to compare them."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("f5", "reload", "Reload"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            yield RunsTable(id="runs-table")
            yield Static("", id="runs-hint")
            yield RunComparison("", id="runs-compare")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs-table").border_title = "Runs"
        self.query_one("#runs-compare").border_title = "Compare"
        self.action_reload()

    def action_reload(self) -> None:
        """Read the run records again."""
        self._load()

    @work(thread=True, exclusive=True)
    def _load(self) -> None:
        from app.config import data_dir
        from ipc.records import list_runs

        try:
            runs = list_runs(data_dir())
        except Exception as exc:  # an unreadable folder is a message, not a crash
            self.app.call_from_thread(self.notify, f"run records: {exc}", severity="error")
            runs = []
        self.app.call_from_thread(self._show, runs)

    def _show(self, runs: list) -> None:
        self.query_one(RunsTable).show(runs)
        hint = "no runs recorded yet" if not runs else "space: mark two runs, c: compare"
        self.query_one("#runs-hint", Static).update(hint)

    def action_mark(self) -> None:
        marked = self.query_one(RunsTable).toggle_mark()
        self.query_one("#runs-hint", Static).update(f"marked: {', '.join(marked) or 'none'}")
        if len(marked) == 2:
            self.action_compare()

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
