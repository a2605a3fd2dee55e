"""Past runs: a table of run records and a side-by-side comparison of two of them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.widgets import DataTable, Static

from app.widgets.figures import NA, number, percent

MUTED_STYLE = "dim"  # the labels column
LIVE_STATUS = "● live"  # a run going on now, which `w` opens in the main screen

COLUMNS = (
    "run",
    "started",
    "status",
    "target",
    "draft",
    "placement",
    "AL",
    "accept",
    "tok/s",
    "speedup",
)


def speedup_text(value: float | None) -> str:
    """A speedup as 1.85×, or n/a."""
    return NA if value is None else f"{value:.2f}×"


class RunsTable(DataTable):
    """One row per run record; space marks a row for comparison."""

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.marked: list[str] = []

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, runs: Sequence[Any], live: Collection[str] = ()) -> None:
        """Fill the table from `ipc.records.RunSummary` items (list_runs: newest first); the
        runs in `live` are going on now and can be watched."""
        self.clear()
        for r in runs:
            self.add_row(
                self._mark(r.run_id),
                r.started[:19].replace("T", " "),
                LIVE_STATUS if r.run_id in live else r.status,
                r.target_model,  # as recorded: the catalog name, else the folder as given
                r.draft_model,
                r.placement,
                number(r.mean_acceptance_length),
                percent(r.acceptance_rate),
                number(r.decode_tokens_per_s, ".1f"),
                speedup_text(r.speedup),
                key=r.run_id,
            )

    @property
    def current_run_id(self) -> str | None:
        """The run under the cursor, if any."""
        if not self.row_count:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def toggle_mark(self) -> list[str]:
        """Mark or unmark the row under the cursor; at most two stay marked."""
        run_id = self.current_run_id
        if run_id is None:
            return self.marked
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked = [*self.marked, run_id][-2:]
        for key in self.rows:
            self.update_cell(key, self.columns_keys[0], self._mark(str(key.value)))
        return self.marked

    @property
    def columns_keys(self) -> list:
        """The column keys in order."""
        return list(self.columns)

    def _mark(self, run_id: str) -> str:
        return ("● " if run_id in self.marked else "  ") + run_id


def _plain(value: Any) -> str:
    """A recorded value as text: n/a when absent, floats to 3 significant digits."""
    if value is None:
        return NA
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or NA
    return str(value)


def _placement(value: Any) -> str:
    if not isinstance(value, Mapping):
        return _plain(value)
    return f"target {', '.join(value.get('target') or [])} · draft {value.get('draft') or NA}"


def _positions(value: Any) -> str:
    if not isinstance(value, list | tuple) or not value:
        return NA
    return " ".join(percent(v) for v in value)


def _seconds(value: Any) -> str:
    return NA if value is None else f"{value:.2f} s"


# what a comparison shows: (label, the run record's key, how its value reads)
COMPARED: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("run", "run_id", _plain),
    ("status", "status", _plain),
    ("target model", "target_model", _plain),
    ("draft model", "draft_model", _plain),
    ("placement", "placement", _placement),
    ("mode", "mode", _plain),
    ("k", "k", _plain),
    ("temperature", "temperature", _plain),
    ("new tokens", "new_tokens", _plain),
    ("steps", "steps", _plain),
    ("mean AL", "mean_acceptance_length", number),
    ("acceptance rate", "acceptance_rate", percent),
    ("per position", "per_position_acceptance", _positions),
    ("decode", "decode_tokens_per_s", lambda v: number(v, ".1f", " tok/s")),
    ("speedup", "speedup", speedup_text),
    ("prefill", "prefill_s", _seconds),
    ("wall time", "wall_s", _seconds),
)


def comparison_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, run A, run B) for what matters when comparing two runs, in words."""

    def get(run: Mapping[str, Any], key: str) -> Any:
        summary = run.get("summary") or {}
        return summary.get(key, run.get(key))

    return [(label, show(get(a, key)), show(get(b, key))) for label, key, show in COMPARED]


class RunComparison(Static):
    """Two runs side by side, in aligned columns; a value that differs is bold."""

    def compare(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
        """Show runs a and b next to each other."""
        table = Table(box=None, pad_edge=False, expand=True, show_edge=False)
        table.add_column("", style=MUTED_STYLE, no_wrap=True)
        table.add_column("A", ratio=1, overflow="fold")
        table.add_column("B", ratio=1, overflow="fold")
        for label, x, y in comparison_rows(a, b):
            style = "bold" if x != y else ""
            table.add_row(label, Text(x, style), Text(y, style))
        self.update(table)
