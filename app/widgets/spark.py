"""A sparkline on a fixed scale (Textual's own scales to min–max, so a flat 90 % looks empty)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

BARS = " ▁▂▃▄▅▆▇█"


def spark_text(values: list[float], width: int, ceiling: float | None) -> str:
    """The last `width` values as bar characters, 0 at the bottom and `ceiling` at the top."""
    values = values[-width:] if width > 0 else []
    top = ceiling if ceiling else max(values, default=0.0) or 1.0
    cells = []
    for v in values:
        level = round(min(max(v / top, 0.0), 1.0) * (len(BARS) - 1))
        cells.append(BARS[max(level, 1)])  # a lowest bar shows the sample exists
    return "".join(cells).rjust(width)


class Spark(Widget):
    """One line of bars, newest on the right; `ceiling` None scales to the data's maximum."""

    DEFAULT_CSS = "Spark { height: 1; }"

    data: reactive[tuple[float, ...]] = reactive(())

    def __init__(self, ceiling: float | None = 100.0, **kw) -> None:
        super().__init__(**kw)
        self.ceiling = ceiling

    def render(self) -> Text:
        return Text(spark_text(list(self.data), self.size.width, self.ceiling))
