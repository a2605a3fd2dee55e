"""The generated text, as it streams in."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

KEEP_CHARS = 20_000  # the pane shows the tail of very long outputs
# a growing text lays the whole screen out again: at most this often while text streams in
# (a step can come every millisecond; a layout of the screen takes tens of them)
SHOW_EVERY_S = 0.25


class OutputPane(VerticalScroll):
    """Streams the run's output text; the prompt is shown dimmed before it."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._prompt = ""
        self._text = ""
        self._due = False  # a show is due at the next tick of the stream

    def compose(self):
        yield Static("", classes="output-text")

    def begin(self, prompt: str) -> None:
        """Clear the pane for a new run of this prompt."""
        self._prompt, self._text = prompt, ""
        self._show()

    def append(self, text: str) -> None:
        """Add newly generated text (shown within SHOW_EVERY_S)."""
        self._text = (self._text + text)[-KEEP_CHARS:]
        if not self._due:
            self._due = True
            self.set_timer(SHOW_EVERY_S, self._show)

    def finish(self, text: str) -> None:
        """Show the run's whole output, as its record holds it."""
        if text[-KEEP_CHARS:] != self._text:
            self._text = text[-KEEP_CHARS:]
            self._show()

    @property
    def text(self) -> str:
        """The generated text so far."""
        return self._text

    def _show(self) -> None:
        self._due = False
        shown = Text()
        shown.append(self._prompt, style="dim")  # only the prompt: the output is at full colour
        shown.append(self._text)
        self.query_one(".output-text", Static).update(shown)
        self.scroll_end(animate=False)
