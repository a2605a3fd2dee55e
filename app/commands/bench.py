"""`specdeck bench`: a prompt suite through one or more placements, target-only beside
speculative decoding (and transformers' assisted generation with `--peers hf`); a table,
and bench.json, bench.md and bench.png in the output folder.

Every placement, and the transformers peer, runs through the daemons: this process never
imports torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import run_args
from backends.placement import PlacementError
from engine.errors import EngineInputError

if TYPE_CHECKING:
    from app.bench.placements import PlacementSpec
    from app.bench.suites import BenchPrompt
    from ipc.run_spec import CheckedRun


def main(args: argparse.Namespace) -> int:
    from app.bench import report
    from app.bench.placements import PlacementSpec, read_placements
    from app.config import data_dir
    from app.inventory import open_inventory
    from ipc.records import new_run_id

    specs = read_placements(args.placements) if args.placements else [PlacementSpec("")]
    suite, prompts = _prompts(args)
    texts = tuple(p.text for p in prompts)
    inventory = open_inventory(args)
    try:
        runs = [
            run_args.check_spec(
                replace(
                    run_args.spec_from_args(_args_for(args, spec), texts),
                    baseline=True,  # a bench always decodes target-only for the speedup
                    pooled=True,
                    prompt_ids=tuple(p.id for p in prompts),
                    prompt_source=suite,
                ),
                args,
                inventory,
            )
            for spec in specs
        ]
        first = runs[0]
        bench_id = new_run_id()
        out_dir = Path(args.out).expanduser() if args.out else data_dir() / "bench" / bench_id
        peers = sorted(set(args.peers))
        placements: list[dict[str, Any]] = []
        document = {
            "bench_id": bench_id,
            "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "suite": suite,
            "prompts": [{"id": p.id, "chars": len(p.text)} for p in prompts],
            "settings": {
                "k": first.k,
                "temperature": first.temperature,
                "seed": first.seed,
                "max_new_tokens": first.max_new_tokens,
                "warmup_tokens": first.warmup_tokens,
            },
            "peers": peers,
            "out_dir": str(out_dir),
            "placements": placements,
            "rows": [],
        }
        total = len(runs) * len(prompts) * (1 + len(peers))
        with BenchProgress(total, enabled=sys.stderr.isatty()) as progress:
            for spec, run in zip(specs, runs, strict=True):
                placements.append(run_placement(spec, run, peers, progress, args, inventory))
                document["rows"] = report.table_rows(placements)
                # written after every placement, so a bench cut short keeps what it measured
                report.write_outputs(document, out_dir, chart=False)
    finally:
        inventory.close()
    notes = report.write_outputs(document, out_dir)
    for note in notes:
        print(f"specdeck: {note}", file=sys.stderr)
    where = f"results in {out_dir} (bench.json, bench.md{'' if notes else ', bench.png'})"
    if args.json:
        print(json.dumps(document, indent=2))
        print(where, file=sys.stderr)
    else:
        print_table(document["rows"])
        print(where)
    return 1 if any(p["error"] for p in placements) else 0


def _args_for(args: argparse.Namespace, spec: PlacementSpec) -> argparse.Namespace:
    """The command line's options with a placement's own values put over them."""
    values = dict(vars(args))
    for key in ("target", "draft", "mode", "target_model", "draft_model"):
        if getattr(spec, key) is not None:
            values[key] = getattr(spec, key)
    return argparse.Namespace(**values)


def _prompts(args: argparse.Namespace) -> tuple[str, list[BenchPrompt]]:
    """(suite name, prompts): --prompt/--prompt-file give one prompt, else the suite's."""
    from app.bench.suites import BenchPrompt, suite_prompts

    if args.prompt is not None or args.prompt_file is not None:
        return "prompt", [
            BenchPrompt("prompt", run_args.read_prompt(args.prompt, args.prompt_file))
        ]
    return args.suite, suite_prompts(args.suite, args.n, args.sample, args.seed)


class BenchRunFailed(RuntimeError):
    """One placement's session failed; the message is one line."""


def run_placement(
    spec: PlacementSpec,
    run: CheckedRun,
    peers: list[str],
    progress: BenchProgress,
    args: argparse.Namespace,
    inventory: Any,
) -> dict[str, Any]:
    """Bench one placement (and its peers); a failure is kept in `error`, not raised."""
    from ipc.records import placement_text

    placement = {"target": list(run.placement.target), "draft": run.placement.draft}
    entry: dict[str, Any] = {
        "name": spec.name or placement_text(placement),
        "placement": placement,
        "simulated_devices": run.simulated_devices,
        "mode": run.mode,
        "target_model": run.target.name,
        "draft_model": run.draft.name,
        "run_id": None,
        "result": None,
        "error": None,
        "peers": {},
    }
    name = entry["name"]
    try:
        entry["result"] = session(run, inventory, progress, name)
        entry["run_id"] = entry["result"].get("run_id")
    except BenchRunFailed as exc:
        entry["error"] = str(exc)
        print(f"specdeck: placement {name} failed: {entry['error']}", file=sys.stderr)
        progress.advance(len(run.prompts) * (1 + len(peers)))
        return entry
    for peer in peers:
        entry["peers"][peer] = _peer(run, entry["result"], progress, name, args, inventory)
    return entry


def session(run: CheckedRun, inventory: Any, progress: BenchProgress, name: str) -> dict:
    """Every prompt of a run through one daemon session; its document (models load once)."""
    from app.config import data_dir
    from ipc import events
    from ipc.runner import start_run

    def show(event: Any) -> None:
        if isinstance(event, events.StatusEvent) and event.state in ("loading", "ready"):
            progress.phase(f"{name}: {event.role} {event.state}")
        elif isinstance(event, events.PromptEvent):
            progress.phase(f"{name}: prompts")
            progress.advance()

    progress.phase(f"{name}: starting daemons")
    handle = start_run(run, inventory=inventory, on_event=show, data_dir=data_dir())
    result = handle.wait_to_end()
    if result is None or handle.error is not None:
        text = handle.error.text if handle.error else "the run stopped"
        raise BenchRunFailed(f"{text} (record {handle.record_dir})")
    from ipc.records import read_prompt_rows

    # each prompt's document, from its row in the record (a bench's suite is a few hundred)
    return {**result, "prompts": list(read_prompt_rows(handle.record_dir))}


def _peer(
    run: CheckedRun,
    ours: dict[str, Any],
    progress: BenchProgress,
    name: str,
    args: argparse.Namespace,
    inventory: Any,
) -> dict[str, Any]:
    """transformers' assisted generation on the same pair, in a target daemon that holds the
    draft too (assisted generation is one process); errors kept in `error`."""
    from engine.metrics import compare_peer

    peer_spec = replace(
        run.spec, decoder="hf-assisted", mode="inprocess", draft=None, baseline=False
    )
    try:
        peer_run = run_args.check_spec(peer_spec, args, inventory)
        peer = session(peer_run, inventory, progress, f"{name}: hf")
        return {**compare_peer(peer, ours, run.temperature), "error": None}
    except (BenchRunFailed, EngineInputError, PlacementError) as exc:
        text = str(exc).strip().splitlines()[0]
        print(f"specdeck: hf peer on {name} failed: {text}", file=sys.stderr)
        progress.advance(len(run.prompts))
        return {"error": text, "decode_tokens_per_s": None, "mean_acceptance_length": None}


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rich table of results on stdout."""
    from rich.console import Console
    from rich.table import Table

    from app.bench.report import COLUMNS, cell

    table = Table(title="specdeck bench")
    for key, title in COLUMNS:
        right = key in (
            "mean_al",
            "acceptance",
            "tokens_per_s",
            "target_only_tokens_per_s",
            "speedup",
        )
        table.add_column(title, justify="right" if right else "left")
    if any(r.get("error") for r in rows):
        table.add_column("note")
    for row in rows:
        values = [cell(key, row.get(key)) for key, _ in COLUMNS]
        if any(r.get("error") for r in rows):
            values.append(f"failed: {row['error']}" if row.get("error") else "")
        table.add_row(*values)
    Console(width=max(160, Console().width)).print(table)


class BenchProgress:
    """A rich progress bar on stderr over every prompt of every placement; off without a tty."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> BenchProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("prompts"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, text: str) -> None:
        """Say what the bench is doing now."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self, count: int = 1) -> None:
        """Prompts done."""
        if self._progress is not None:
            self._progress.advance(self._task, count)
