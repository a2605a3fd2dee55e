"""Drag and drop of role chips onto device cards, built from Textual parts (after ganban).

A press captures the mouse; only after the pointer moves 2 cells does a drag start (so a
click stays a click). A ghost on the overlay layer follows the pointer via `styles.offset`;
the drop target under the pointer is found with `screen.get_widgets_at`. Whether a drop may
land is not decided here: the screen answers `DragHover` and `RoleDropped` with the board.
"""

from __future__ import annotations

from textual import events
from textual.geometry import Offset
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

DRAG_THRESHOLD = 2  # cells the pointer must travel before a press becomes a drag


class DropTarget(Widget):
    """A widget a role can be dropped on; `drop_id` names the device."""

    drop_id: str = ""

    def drag_over(self, refused: str | None) -> None:
        """Show that a role hovers here: welcome, or refused for a reason."""
        self.set_class(refused is None, "-drop-ok")
        self.set_class(refused is not None, "-drop-refused")
        self.tooltip = refused

    def drag_away(self) -> None:
        """The dragged role left this target."""
        self.remove_class("-drop-ok", "-drop-refused")
        self.tooltip = None


class DragGhost(Static):
    """The label that follows the pointer while a role is dragged."""


class RoleDragHover(Message):
    """A dragged role is over `device_id` (None: over no card)."""

    def __init__(self, role: str, source: str | None, device_id: str | None) -> None:
        super().__init__()
        self.role = role
        self.source = source
        self.device_id = device_id


class RoleDropped(Message):
    """A role was dropped: from the palette (`source` None) or a card, onto a card or nothing."""

    def __init__(self, role: str, source: str | None, destination: str | None) -> None:
        super().__init__()
        self.role = role
        self.source = source
        self.destination = destination


class RoleClicked(Message):
    """A role chip was pressed and released without dragging."""

    def __init__(self, role: str, source: str | None) -> None:
        super().__init__()
        self.role = role
        self.source = source


class Draggable(Static):
    """A role label the mouse can pick up; `source` is the card it sits on, if any."""

    def __init__(self, label: str, role: str, source: str | None = None, **kwargs) -> None:
        super().__init__(label, **kwargs)
        self.label = label
        self.role = role
        self.source = source
        self._press: Offset | None = None
        self._ghost: DragGhost | None = None
        self._over: DropTarget | None = None

    @property
    def dragging(self) -> bool:
        """Whether a drag is under way (past the threshold)."""
        return self._ghost is not None

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if event.button != 1:
            return
        event.stop()
        self._press = event.screen_offset
        self.capture_mouse()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._press is None:
            return
        event.stop()
        where = event.screen_offset
        if not self.dragging:
            dx, dy = where.x - self._press.x, where.y - self._press.y
            if max(abs(dx), abs(dy)) < DRAG_THRESHOLD:
                return
            self._ghost = DragGhost(self.label, classes=f"-{self.role}")
            self.screen.mount(self._ghost)
            self.add_class("-dragging")
        self._ghost.styles.offset = (where.x + 1, where.y)
        target = self._target_at(where)
        if target is not self._over:
            if self._over is not None:
                self._over.drag_away()
            self._over = target
            self.post_message(
                RoleDragHover(self.role, self.source, target.drop_id if target else None)
            )

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._press is None:
            return
        event.stop()
        self.release_mouse()
        self._press = None
        if not self.dragging:
            self.post_message(RoleClicked(self.role, self.source))
            return
        target = self._target_at(event.screen_offset)
        self._end_drag()
        self.post_message(RoleDropped(self.role, self.source, target.drop_id if target else None))

    def _end_drag(self) -> None:
        if self._over is not None:
            self._over.drag_away()
            self._over = None
        if self._ghost is not None:
            self._ghost.remove()
            self._ghost = None
        self.remove_class("-dragging")

    def _target_at(self, where: Offset) -> DropTarget | None:
        """The drop target under a screen position, looking past the ghost."""
        for widget, _region in self.screen.get_widgets_at(where.x, where.y):
            if widget is self._ghost:
                continue
            for node in (widget, *widget.ancestors):
                if isinstance(node, DropTarget):
                    return node
            return None
        return None
