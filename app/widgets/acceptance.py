"""The acceptance pane: AL of the last step, mean AL, acceptance rate, per-position
acceptance bars and the AL history."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widget import Widget

from app.run_control import AcceptanceFigures
from app.widgets.figures import MUTED, NA, bar, flow, number, percent
from app.widgets.spark import spark_text

POSITION_ROWS = 5  # per-position bars that fit the pane in one column
COMPACT_BELOW_ROWS = 8  # fewer rows than this: the figures without captions


class AcceptancePane(Widget):
    """Acceptance length and rate as the run goes on (one widget drawing every line)."""

    figures: reactive[AcceptanceFigures] = reactive(AcceptanceFigures, init=False)

    def render(self) -> str:
        f = self.figures
        width, rows = self.content_size
        ceiling = float((f.k or max(f.history, default=1)) + 1)
        history = spark_text([float(v) for v in f.history], width, ceiling)
        if rows < COMPACT_BELOW_ROWS:  # a short terminal: no captions, positions on one line
            spark = spark_text(list(f.per_position), len(f.per_position), 1.0)
            positions = f"[$chart-acceptance]{spark}[/]" if spark else NA
            return (
                f"{self._headline(width)}\n[$chart-acceptance]{history}[/]\n"
                f"[{MUTED}]per position[/] {positions}"
            )
        return (
            f"{self._headline(width)}\n"
            f"[{MUTED}]AL history[/]\n"
            f"[$chart-acceptance]{history}[/]\n"
            f"[{MUTED}]{'per-position acceptance' if width >= 23 else 'per position'}[/]\n"
            f"{self._positions()}"
        )

    def _headline(self, width: int) -> str:
        f = self.figures
        last = NA if f.last_al is None else str(f.last_al)
        return flow(
            [("AL last", last), ("mean AL", number(f.mean_al)), ("acceptance", percent(f.rate))],
            width,
        )

    def _positions(self) -> str:
        f = self.figures
        if not f.per_position:
            return NA
        columns = 1 if len(f.per_position) <= POSITION_ROWS else 2  # two once k outgrows the pane
        width = 12 if columns == 1 else 8
        cells = [  # the bars in the chart's colour, the figures as text
            f"{i:>2} [$chart-acceptance]{bar(p, width)}[/] {percent(p):>4}"
            for i, p in enumerate(f.per_position, 1)
        ]
        rows = -(-len(cells) // columns)
        return "\n".join("  ".join(cells[r::rows]) for r in range(rows))
