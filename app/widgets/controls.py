"""Run controls: prompt, k (or auto), temperature, token budget, baseline, launch and stop."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static

from ipc.run_spec import (  # the command line's defaults, the same here
    DEFAULT_K,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_TEMPERATURE,
)


class BadOption(ValueError):
    """A run option typed as something that is not a number; the message is one line."""


@dataclass(frozen=True)
class RunOptions:
    """What the run controls say."""

    prompt: str
    k: str  # as typed, N or "auto": the one check (ipc.run_spec.check_run) parses it
    temperature: float
    max_new_tokens: int
    baseline: bool


def parse_options(
    prompt: str, k: str, temperature: str, max_new_tokens: str, baseline: bool
) -> RunOptions:
    """Read the typed numbers; BadOption says which is not one. Their bounds, and k's, are
    the one check's (`ipc.run_spec.check_options`), the same as on the command line."""
    try:
        temp = float(temperature)
    except ValueError:
        raise BadOption(f"temperature must be a number (not {temperature!r})") from None
    if not max_new_tokens.strip().isdigit():
        raise BadOption(f"max new tokens must be a whole number (not {max_new_tokens!r})")
    return RunOptions(
        prompt=prompt,
        k=k.strip(),
        temperature=temp,
        max_new_tokens=int(max_new_tokens),
        baseline=baseline,
    )


class RunControls(Vertical):
    """The options of the next run and the launch and stop buttons."""

    async def fill(self) -> None:
        """Mount the inputs and buttons; the screen does it after the first frame."""
        await self.mount_compose(self._parts())

    def _parts(self) -> ComposeResult:
        from app.widgets.tickbox import TickBox  # loads with the parts, after the first frame

        yield Static("prompt", classes="pane-label")
        yield Input(DEFAULT_PROMPT, id="prompt", placeholder="prompt text", compact=True)
        with Horizontal(classes="option-row"):
            yield Static("k", classes="option-label")
            yield Input(
                str(DEFAULT_K), id="k", placeholder="N or auto", classes="option", compact=True
            )
            yield Static("temp", classes="option-label")
            yield Input(str(DEFAULT_TEMPERATURE), id="temperature", classes="option", compact=True)
            yield Static("max", classes="option-label")
            yield Input(
                str(DEFAULT_MAX_NEW_TOKENS), id="max-new-tokens", classes="option", compact=True
            )
        yield TickBox(
            "target-only baseline",
            id="baseline",
            compact=True,
            tooltip="Also decode with the target alone, for the speedup",
        )
        with Horizontal(classes="button-row"):
            yield Button("Launch", id="launch", variant="success", compact=True)
            yield Button("Stop", id="stop", variant="error", disabled=True, compact=True)

    def options(self) -> RunOptions:
        """The typed options; BadOption says what is wrong."""
        value = lambda wid: self.query_one(f"#{wid}", Input).value  # noqa: E731
        return parse_options(
            value("prompt"),
            value("k"),
            value("temperature"),
            value("max-new-tokens"),
            self.query_one("#baseline").value,
        )

    def set_running(self, running: bool) -> None:
        """Enable Stop while a run goes on, Launch otherwise."""
        self.query_one("#launch", Button).disabled = running
        self.query_one("#stop", Button).disabled = not running
