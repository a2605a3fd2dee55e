"""The role palette: a TARGET chip and a DRAFT chip to drag onto device cards."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive

from app.widgets.drag import Draggable

CHIP_LABELS = {"target": "TARGET", "draft": "DRAFT"}


class RoleChip(Draggable):
    """A role chip in the palette; drag it onto a card, or choose it and press enter there."""

    def __init__(self, role: str) -> None:
        super().__init__(f" {CHIP_LABELS[role]} ", role, id=f"chip-{role}", classes=f"-{role}")


class RolePalette(Horizontal):
    """The two role chips; `selected` is the one the keyboard places."""

    selected: reactive[str] = reactive("target")

    def compose(self) -> ComposeResult:
        yield RoleChip("target")
        yield RoleChip("draft")

    def watch_selected(self, selected: str) -> None:
        for chip in self.query(RoleChip):
            chip.set_class(chip.role == selected, "-selected")
