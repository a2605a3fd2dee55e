"""`specdeck run`: one speculative decoding run, headless, with a summary or one JSON document.

Every run goes through the supervisor and the daemons (in-process means the draft inside the
target daemon), so this process never imports torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from app.run_args import check_spec, spec_from_args
from engine.errors import EngineInputError

BAD_INPUT_STATUS = 2  # a daemon that exits 2 could not start on bad input (a model)

if TYPE_CHECKING:
    from engine.metrics import StepRecord
    from ipc.events import RunEvent


def main(args: argparse.Namespace) -> int:
    from app.config import data_dir
    from backends.discovery import discover
    from ipc.runner import start_run

    inventory = discover(args.simulate)
    try:
        run = check_spec(spec_from_args(args), args, inventory)
        with RunProgress(run.max_new_tokens, enabled=sys.stderr.isatty()) as progress:
            handle = start_run(
                run, inventory=inventory, on_event=progress.show, data_dir=data_dir()
            )
            result = handle.wait_to_end()
    finally:
        inventory.close()
    if result is None:
        text = handle.error.text if handle.error else "the run stopped"
        line = f"{text} (record {handle.record_dir})"
        if handle.error is not None and handle.error.exit_status == BAD_INPUT_STATUS:
            raise EngineInputError(line)  # a daemon found bad input: one line, status 2
        print(f"specdeck: {line}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["output_text"])
        print()
        print(format_summary(result))
    return 0


def format_summary(result: dict[str, Any]) -> str:
    """The human-readable summary printed after the text."""

    def num(value: float | None, fmt: str = "{:.2f}", unit: str = "") -> str:
        return "n/a" if value is None else fmt.format(value) + unit

    placement = result["placement"]
    simulated = set(result["simulated_devices"])
    mark = lambda i: f"{i} (simulated)" if i in simulated else i  # noqa: E731
    positions = " ".join(f"{p:.2f}" for p in result["per_position_acceptance"]) or "n/a"
    rows = [
        ("models", f"{result['target_model']} <- {result['draft_model']}"),
        (
            "placement",
            f"target {', '.join(map(mark, placement['target']))}; "
            f"draft {mark(placement['draft'])}; {result['mode']}",
        ),
        ("k", str(result["k"])),
        ("tokens", f"{result['prompt_tokens']} prompt, {result['new_tokens']} new"),
        ("steps", str(result["steps"])),
        ("mean acceptance length", num(result["mean_acceptance_length"])),
        ("acceptance rate", num(result["acceptance_rate"], "{:.1%}")),
        ("per-position acceptance", positions),
        ("decode", num(result["decode_tokens_per_s"], "{:.1f}", " tokens/s")),
        ("prefill", num(result["prefill_s"], "{:.3f}", " s")),
    ]
    paths = result.get("decode_paths") or {}
    if paths:  # which forward each role ran, and why not the fastest
        named = [
            f"{role} {p.get('path')}" + (f" ({p['reason']})" if p.get("reason") else "")
            for role, p in paths.items()
        ]
        rows.append(("decode paths", "; ".join(named)))
        rows.append(("graph capture", num(result.get("capture_s"), "{:.2f}", " s")))
    if result["baseline"] is not None:
        rows.append(
            (
                "target-only decode",
                num(result["baseline"]["decode_tokens_per_s"], "{:.1f}", " tokens/s"),
            )
        )
        rows.append(("speedup", num(result["speedup"], "{:.2f}", "x")))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


class RunProgress:
    """A live line on stderr (tokens, mean AL, tokens/s) while a run goes on; off without a tty."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._committed = 0
        self._steps = 0
        self._tokens = 0
        self._decode_s = 0.0

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description:<16}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("tokens  AL {task.fields[al]}  {task.fields[tps]} tok/s"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total, al="-", tps="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, name: str, reset: bool = False) -> None:
        """Show what the run is doing now."""
        if reset:
            self._committed = self._steps = self._tokens = 0
            self._decode_s = 0.0
        self._update(description=name, completed=self._tokens, al="-", tps="-")

    def first_token(self, token: int) -> None:
        """The token chosen at the prefill."""
        self._tokens = 1
        self._update(completed=self._tokens)

    def token(self, token: int) -> None:
        """One target-only token."""
        self._tokens += 1
        self._update(completed=self._tokens)

    def step(self, step: StepRecord, tokens: list[int]) -> None:
        """One speculative step."""
        self._steps += 1
        self._committed += step.committed
        self._tokens += len(tokens)
        self._decode_s += step.draft_s + step.verify_s + step.transport_s
        al = f"{self._committed / self._steps:.2f}"
        tps = f"{self._committed / self._decode_s:.1f}" if self._decode_s > 0 else "-"
        self._update(completed=self._tokens, al=al, tps=tps)

    def show(self, event: RunEvent) -> None:
        """Follow the run's events (called from the run's thread)."""
        from ipc import events

        if isinstance(event, events.StatusEvent) and event.state == "capture":
            self.phase(f"{event.role}: {event.text}")  # graphs: neither prefill nor decode
        elif isinstance(event, events.StatusEvent) and event.role == "target":
            if event.state == "loading":
                self.phase("loading models")
            elif event.state == "prefill":
                self.phase("speculative")
            elif event.state == "decode" and event.text.startswith("baseline"):
                self.phase("target only", reset=True)
            elif event.state == "decode":
                self.first_token(0)
        elif isinstance(event, events.StepEvent):
            self.step(event.step, list(event.token_ids))
        elif isinstance(event, events.TokenEvent):
            self.token(event.token_ids[0] if event.token_ids else 0)

    def _update(self, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)
