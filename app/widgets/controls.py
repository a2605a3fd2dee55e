"""Run controls: prompt, k (or auto), temperature, token budget, the workload (a suite or a
prompts file, its first n, rounds, a time bound), baseline, launch and stop, and the
workload's gauge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Select, Static

from ipc.run_spec import (  # the command line's defaults, the same here
    DEFAULT_K,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_TEMPERATURE,
)

if TYPE_CHECKING:
    from app.progress import WorkloadProgress


SOURCES = (  # where the run's prompts come from: (shown, value); a suite is named by its value
    ("the prompt above", "prompt"),
    ("suite humaneval", "humaneval"),
    ("a prompts file", "file"),
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
    source: str = "prompt"  # "prompt", a suite's name, or "file"
    prompts_file: str | None = None
    n: int | None = None  # the first n of the suite's or the file's prompts; None: all
    repeat: int | None = None
    duration: str | None = None  # as typed: the one check parses it


def parse_options(
    prompt: str,
    k: str,
    temperature: str,
    max_new_tokens: str,
    baseline: bool,
    source: str = "prompt",
    prompts_file: str = "",
    n: str = "",
    repeat: str = "",
    duration: str = "",
) -> RunOptions:
    """Read the typed numbers; BadOption says which is not one. Their bounds, and k's and
    the duration's, are the one check's (`ipc.run_spec.check_run`), the same as on the
    command line. An empty n, repeat or duration is the default (all, once, no time bound)."""
    try:
        temp = float(temperature)
    except ValueError:
        raise BadOption(f"temperature must be a number (not {temperature!r})") from None
    if not max_new_tokens.strip().isdigit():
        raise BadOption(f"max new tokens must be a whole number (not {max_new_tokens!r})")
    if source == "file" and not prompts_file.strip():
        raise BadOption("name the prompts file (one prompt a line, or JSON Lines)")
    return RunOptions(
        prompt=prompt,
        k=k.strip(),
        temperature=temp,
        max_new_tokens=int(max_new_tokens),
        baseline=baseline,
        source=source,
        prompts_file=prompts_file.strip() if source == "file" else None,
        n=None if source == "prompt" else _whole("n", n),
        repeat=_whole("repeat", repeat),
        duration=duration.strip() or None,
    )


def _whole(name: str, text: str) -> int | None:
    """A typed whole number, or None when left empty; its bounds are the check's."""
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise BadOption(f"{name} must be a whole number (not {text!r})")
    return int(text)


class RunControls(Vertical):
    """The options of the next run and the launch and stop buttons."""

    async def fill(self) -> None:
        """Mount the inputs and buttons; the screen does it after the first frame."""
        await self.mount_compose(self._parts())

    def _parts(self) -> ComposeResult:
        from app.widgets.tickbox import TickBox  # loads with the parts, after the first frame
        from app.widgets.workload import WorkloadGauge

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
        with Horizontal(classes="option-row"):
            yield Static("prompts", classes="option-label")
            yield Select(SOURCES, value="prompt", allow_blank=False, id="source", compact=True)
        yield Input(
            id="prompts-file",
            placeholder="prompts file: one a line, or JSONL",
            compact=True,
            disabled=True,
        )
        with Horizontal(classes="option-row"):
            yield Static("n", classes="option-label")
            yield Input(id="n", placeholder="all", classes="option", compact=True)
            yield Static("repeat", classes="option-label")
            yield Input(id="repeat", placeholder="1", classes="option", compact=True)
            yield Static("for", classes="option-label")
            yield Input(id="duration", placeholder="2h", classes="option", compact=True)
        yield TickBox(
            "target-only baseline",
            id="baseline",
            compact=True,
            tooltip="Also decode with the target alone, for the speedup",
        )
        with Horizontal(classes="button-row"):
            yield Button("Launch", id="launch", variant="success", compact=True)
            yield Button("Stop", id="stop", variant="error", disabled=True, compact=True)
        yield WorkloadGauge(id="workload")

    def options(self) -> RunOptions:
        """The typed options; BadOption says what is wrong."""
        value = lambda wid: self.query_one(f"#{wid}", Input).value  # noqa: E731
        return parse_options(
            value("prompt"),
            value("k"),
            value("temperature"),
            value("max-new-tokens"),
            self.query_one("#baseline").value,
            source=str(self.query_one("#source", Select).value),
            prompts_file=value("prompts-file"),
            n=value("n"),
            repeat=value("repeat"),
            duration=value("duration"),
        )

    @on(Select.Changed, "#source")
    def _source_changed(self, event: Select.Changed) -> None:
        """The prompts file is typed only when the prompts come from one."""
        self.query_one("#prompts-file", Input).disabled = event.value != "file"

    def show_workload(self, progress: WorkloadProgress | None) -> None:
        """The workload's gauge (hidden for a run of one prompt)."""
        self.query_one("#workload").show(progress)  # type: ignore[attr-defined]

    def set_running(self, running: bool) -> None:
        """Enable Stop while a run goes on, Launch otherwise."""
        self.query_one("#launch", Button).disabled = running
        self.query_one("#stop", Button).disabled = not running
