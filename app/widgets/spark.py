"""Sparklines drawn as text on a fixed scale (Textual's Sparkline scales to min–max, so a
flat 90 % would look empty)."""

from __future__ import annotations

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
