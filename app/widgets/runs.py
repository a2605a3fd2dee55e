"""Past runs: a table of run records and a side-by-side comparison of two of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from textual.markup import escape
from textual.widgets import DataTable, Static

from app.widgets.figures import NA, number, percent

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

    def show(self, runs: Sequence[Any]) -> None:
        """Fill the table from `ipc.records.RunSummary` items (list_runs: newest first)."""
        self.clear()
        for r in runs:
            self.add_row(
                self._mark(r.run_id),
                r.started[:19].replace("T", " "),
                r.status,
                r.target_model,  # as recorded: the catalog name, else the folder as given
                r.draft_model,
                r.placement,
                number(r.mean_acceptance_length),
                percent(r.acceptance_rate),
                number(r.decode_tokens_per_s, ".1f"),
                speedup_text(r.speedup),
                key=r.run_id,
            )

    def toggle_mark(self) -> list[str]:
        """Mark or unmark the row under the cursor; at most two stay marked."""
        if not self.row_count:
            return self.marked
        run_id = str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
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


def _fmt(value: Any) -> str:
    if value is None:
        return NA
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or NA
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def comparison_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(field, run A, run B) for the fields that matter when comparing two runs."""

    def get(run: Mapping[str, Any], key: str) -> Any:
        summary = run.get("summary") or {}
        return summary.get(key, run.get(key))

    keys = (
        "run_id",
        "status",
        "target_model",
        "draft_model",
        "placement",
        "mode",
        "k",
        "temperature",
        "new_tokens",
        "steps",
        "mean_acceptance_length",
        "acceptance_rate",
        "per_position_acceptance",
        "decode_tokens_per_s",
        "speedup",
        "prefill_s",
        "wall_s",
    )
    return [(key, _fmt(get(a, key)), _fmt(get(b, key))) for key in keys]


class RunComparison(Static):
    """Two runs side by side."""

    def compare(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
        """Show runs a and b next to each other."""
        rows = comparison_rows(a, b)
        width = max(len(k) for k, _, _ in rows)
        lines = [f"[b]{'':{width}}  {'A':<36}  B[/b]"]
        lines += [f"{k:{width}}  {escape(x):<36}  {escape(y)}" for k, x, y in rows]
        self.update("\n".join(lines))
