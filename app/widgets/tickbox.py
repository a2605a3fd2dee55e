"""A checkbox that reads `[x]` when ticked and `[ ]` when not, on any terminal.

Textual's checkbox draws an `X` in both states and tells them apart by colour alone, so on a
low-contrast terminal an unticked box reads as ticked.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox


class TickBox(Checkbox):
    """A checkbox whose state is in its text: `[x]` ticked, `[ ]` not."""

    DEFAULT_CSS = """
    TickBox > .toggle--button, TickBox.-on > .toggle--button {
        color: $foreground;
        background: transparent;
        text-style: bold;
    }
    """

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("[", ("x" if self.value else " ", style), "]")
