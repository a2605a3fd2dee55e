"""`specdeck run`: one speculative decoding run, headless, with a summary or one JSON document.

Every run goes through the supervisor and the daemons (in-process means the draft inside the
target daemon), so this process never imports torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.progress import WorkloadProgress
from app.run_args import check_spec, spec_from_args
from engine.errors import EngineInputError
from ipc.records import PROMPTS_FILE

BAD_INPUT_STATUS = 2  # a daemon that exits 2 could not start on bad input (a model)

PLAIN_EVERY_S = 10.0  # without a terminal, a workload's progress line at most this often

if TYPE_CHECKING:
    from engine.metrics import StepRecord
    from ipc.events import PromptEvent, RunEvent
    from ipc.run_spec import Workload


def main(args: argparse.Namespace) -> int:
    from app.config import data_dir
    from app.inventory import open_inventory
    from ipc.runner import start_run

    inventory = open_inventory(args)
    metrics = None
    try:
        if args.metrics_port is not None:  # a busy port ends the command before the run starts
            from app.exporter import RunMetricsServer

            metrics = RunMetricsServer(inventory, args.metrics_port)
            print(f"specdeck: serving {metrics.server.url}", file=sys.stderr)
        run = check_spec(spec_from_args(args), args, inventory)
        workload = run.workload if run.session else None
        with RunProgress(run.max_new_tokens, sys.stderr.isatty(), workload) as progress:
            handle = start_run(
                run,
                inventory=inventory,
                sampler=metrics and metrics.sampler,
                on_event=metrics.relay(progress.show) if metrics else progress.show,
                data_dir=data_dir(),
            )
            if metrics is not None:
                metrics.started(run, handle.run_id)
            result = handle.wait_to_end()
    finally:
        if metrics is not None:
            metrics.close()
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
    elif "output_text" in result:
        print(result["output_text"])
        print()
        print(format_summary(result))
    else:  # a workload: each prompt's output is its row in the record
        print(format_summary(result, handle.record_dir))
    return 0


def format_summary(result: dict[str, Any], record_dir: Path | None = None) -> str:
    """The human-readable summary printed after the text (a workload's, with its record)."""

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
        *_workload_rows(result, record_dir),
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


def _workload_rows(result: dict[str, Any], record_dir: Path | None) -> list[tuple[str, str]]:
    """A workload's rows of the summary: its prompts, how it ended, where each one's row is."""
    work = result.get("workload")
    if work is None:
        return []
    source = f" from {work['source']}" if work["source"] else ""
    ended = {"duration": "the time bound", "stopped": "stopped"}.get(result["stop_reason"])
    rows = [
        (
            "prompts",
            f"{result['prompt_count']} done: {result['rounds']} round(s) of {work['prompts']}"
            f"{source}" + (f"; ended by {ended}" if ended else ""),
        )
    ]
    if record_dir is not None:
        rows.append(("prompt rows", str(record_dir / PROMPTS_FILE)))
    return rows


class RunProgress:
    """Live lines on stderr while a run goes on: the prompt's tokens, mean AL and tokens/s, and
    a workload's prompt i of N with its ETA. Without a terminal: nothing for one prompt, a
    plain line now and then for a workload."""

    def __init__(self, total: int, enabled: bool, workload: Workload | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.workload = workload
        self._progress: Any = None
        self._task: Any = None
        self._prompts_task: Any = None
        self._committed = 0
        self._steps = 0
        self._tokens = 0
        self._decode_s = 0.0
        self._plain_at: float | None = None  # when the last plain line was written

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description:<16}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            if self.workload is not None:
                start = WorkloadProgress.starting(self.workload)
                self._prompts_task = self._progress.add_task(
                    start.label, total=1.0, detail=start.detail
                )
            self._task = self._progress.add_task("starting", total=self.total, detail="")
            self._update()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, name: str, reset: bool = False) -> None:
        """Show what the run is doing now."""
        if reset:
            self._committed = self._steps = self._tokens = 0
            self._decode_s = 0.0
        self._update(description=name)

    def first_token(self, token: int) -> None:
        """The token chosen at the prefill."""
        self._tokens = 1
        self._update()

    def token(self, token: int) -> None:
        """One target-only token."""
        self._tokens += 1
        self._update()

    def step(self, step: StepRecord, tokens: list[int]) -> None:
        """One speculative step."""
        self._steps += 1
        self._committed += step.committed
        self._tokens += len(tokens)
        self._decode_s += step.draft_s + step.verify_s + step.transport_s
        self._update()

    def prompt_done(self, event: PromptEvent) -> None:
        """One prompt of a workload finished."""
        now = WorkloadProgress.of(event)
        if self._progress is not None:
            self._progress.update(
                self._prompts_task, description=now.label, completed=now.fraction, detail=now.detail
            )
            return
        clock = time.monotonic()
        if self._plain_at is None or now.finished or clock - self._plain_at >= PLAIN_EVERY_S:
            self._plain_at = clock
            print(f"specdeck: {now.line(event.result)}", file=sys.stderr, flush=True)

    def show(self, event: RunEvent) -> None:
        """Follow the run's events (called from the run's thread)."""
        from ipc import events

        if isinstance(event, events.StatusEvent) and event.state == "capture":
            self.phase(f"{event.role}: {event.text}")  # graphs: neither prefill nor decode
        elif isinstance(event, events.StatusEvent) and event.role == "target":
            if event.state == "loading":
                self.phase("loading models")
            elif event.state == "prefill":
                self.phase("speculative", reset=True)  # a workload's next prompt starts at 0
            elif event.state == "decode" and event.text.startswith("baseline"):
                self.phase("target only", reset=True)
            elif event.state == "decode":
                self.phase("speculative")  # what a capture's label said is over
                self.first_token(0)
        elif isinstance(event, events.StepEvent):
            self.step(event.step, list(event.token_ids))
        elif isinstance(event, events.TokenEvent):
            self.token(event.token_ids[0] if event.token_ids else 0)
        elif isinstance(event, events.PromptEvent):
            self.prompt_done(event)

    def _update(self, **fields: object) -> None:
        if self._progress is not None:
            al = f"{self._committed / self._steps:.2f}" if self._steps else "-"
            tps = f"{self._committed / self._decode_s:.1f}" if self._decode_s > 0 else "-"
            detail = f"{self._tokens}/{self.total} tokens  AL {al}  {tps} tok/s"
            self._progress.update(self._task, completed=self._tokens, detail=detail, **fields)
