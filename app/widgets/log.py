"""The event log: daemon status, errors and deaths, placement refusals."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.color import Color
from textual.style import Style as TextualStyle
from textual.widgets import RichLog

MAX_LINES = 2000
NARROW_BELOW = 32  # columns: a narrower log leaves the time out
# theme variables for each level: the log is rewritten in the new colours when the theme changes
LEVEL_COLOURS = {"error": "text-error", "warning": "text-warning", "debug": "text-muted"}


def stamp() -> str:
    """The wall-clock time a line is written at."""
    return time.strftime("%H:%M:%S")


@dataclass(frozen=True)
class LogLine:
    """One line of the log: when, how serious, which role, what."""

    time: str
    level: str
    role: str
    text: str

    @property
    def message(self) -> str:
        """The line without its time."""
        return f"{self.role}: {self.text}" if self.role else self.text


class EventLog(RichLog):
    """A time-stamped list of what happened, newest at the bottom; wrapped lines stay clear
    of the time column."""

    def __init__(self, **kw) -> None:
        super().__init__(wrap=True, max_lines=MAX_LINES, min_width=8, **kw)
        self.entries: deque[LogLine] = deque(maxlen=MAX_LINES)
        self._width = 0  # the width the lines were last written for

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._rewrite())

    def on_resize(self) -> None:
        if self.scrollable_content_region.width != self._width:  # lines wrap to the new width
            self._rewrite()

    def add(self, text: str, level: str = "info", role: str = "") -> None:
        """Write one line."""
        line = LogLine(stamp(), level, role, text)
        self.entries.append(line)
        self.write(self._row(line))

    def _rewrite(self) -> None:
        self.clear()
        for line in self.entries:
            self.write(self._row(line))

    def _row(self, line: LogLine) -> Table:
        self._width = width = self.scrollable_content_region.width
        row = Table.grid(padding=(0, 1))
        style = self._colour(LEVEL_COLOURS.get(line.level))
        if line.level == "error":
            style += Style(bold=True)
        text = Text(line.message, style)
        if width and width < NARROW_BELOW:  # no room for a time column: the message only
            row.add_column(overflow="fold")
            row.add_row(text)
            return row
        row.add_column(no_wrap=True)
        row.add_column(overflow="fold")
        row.add_row(Text(line.time, style=self._colour("text-muted")), text)
        return row

    def _colour(self, variable: str | None) -> Style:
        """A theme colour as a Rich style, its transparency blended over the log's background."""
        if variable not in self.app.theme_variables:
            return Style()
        background = self.background_colors[1]
        colour = TextualStyle.parse(f"${variable}").foreground or Color(0, 0, 0, 0)
        if colour.auto:  # `auto 60%`: the theme's text colour for this background, 60 % strong
            colour = background.get_contrast_text(colour.a)
        return Style(color=(background + colour).rich_color)  # an ANSI theme's colours too
