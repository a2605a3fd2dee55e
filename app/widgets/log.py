"""The event log: daemon status, errors and deaths, placement refusals."""

from __future__ import annotations

import time

from rich.markup import escape
from textual.widgets import RichLog

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "debug": "dim"}


def stamp() -> str:
    """The wall-clock time a line is written at."""
    return time.strftime("%H:%M:%S")


class EventLog(RichLog):
    """A time-stamped list of what happened, newest at the bottom."""

    def __init__(self, **kw) -> None:
        super().__init__(markup=True, wrap=True, max_lines=2000, min_width=20, **kw)

    def add(self, text: str, level: str = "info", role: str = "") -> None:
        """Write one line."""
        who = f"{role}: " if role else ""
        style = LEVEL_STYLES.get(level, "")
        line = f"[dim]{stamp()}[/dim] {escape(who + text)}"
        self.write(f"[{style}]{line}[/]" if style else line)
