"""`specdeck runs [show ID | plot ID [ID2]] [--json]`: the run records."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from app.config import data_dir
from ipc.records import RunNotFound, list_runs, load_run, placement_text


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(args: argparse.Namespace) -> int:
    if args.action == "plot":
        return plot([i for i in (args.run_id, args.other_run_id) if i], args.out)
    extra = [flag for flag, given in (("--out", args.out), ("ID2", args.other_run_id)) if given]
    if extra:
        print(f"specdeck: {extra[0]} is for runs plot", file=sys.stderr)
        return 2
    if args.action == "show":
        return show(args.run_id or "", args.json)
    if args.run_id:
        print(
            f"specdeck: unexpected argument {args.run_id!r} (did you mean runs show?)",
            file=sys.stderr,
        )
        return 2
    runs = list_runs(data_dir())
    if args.json:
        print(json.dumps({"runs": [dataclasses.asdict(r) for r in runs]}, indent=2))
        return 0
    if not runs:
        print(f"no run records in {data_dir() / 'runs'}")
        return 0
    header = ("id", "time", "status", "models", "placement", "AL", "accept", "tok/s", "speedup")
    rows = [header] + [
        (
            r.run_id,
            r.started[:19].replace("T", " "),
            r.status,
            f"{r.target_model} <- {r.draft_model}",  # as recorded, as the dashboard shows them
            f"{r.placement} ({r.mode})",
            _num(r.mean_acceptance_length, ".2f"),
            _num(r.acceptance_rate, ".1%"),
            _num(r.decode_tokens_per_s, ".1f"),
            "n/a" if r.speedup is None else f"{r.speedup:.2f}x",
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


SHOWN_PROMPT_ROWS = 10  # a workload's first and last rows; the rest are in prompts.jsonl


def prompt_table(rows: list[dict]) -> str:
    """A workload's prompts, one line each (the first and last few of a long one)."""
    header = ("#", "round", "prompt", "tokens", "steps", "AL", "tok/s", "ended")
    shown = rows
    if len(rows) > 2 * SHOWN_PROMPT_ROWS:
        shown = [*rows[:SHOWN_PROMPT_ROWS], None, *rows[-SHOWN_PROMPT_ROWS:]]
    skipped = f"... {len(rows) - 2 * SHOWN_PROMPT_ROWS} more in prompts.jsonl"
    table = [header] + [
        (skipped, "", "", "", "", "", "", "")
        if r is None
        else (
            str(r.get("index", "?")),
            str(r.get("round", "?")),
            str(r.get("prompt_id") or r.get("prompt_index", "?")),
            str(r.get("new_tokens", "?")),
            str(r.get("steps", "?")),
            _num(r.get("mean_acceptance_length"), ".2f"),
            _num(r.get("decode_tokens_per_s"), ".1f"),
            str(r.get("stop_reason", "?")),
        )
        for r in shown
    ]
    widths = [max(len(row[i]) for row in table if row[0] != skipped) for i in range(len(header))]
    return "\n".join(
        row[0]
        if row[0] == skipped
        else "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def show(run_id: str, as_json: bool) -> int:
    """Print one run record; an unknown id is one line and status 2."""
    try:
        run = load_run(data_dir(), run_id)
    except RunNotFound as exc:
        print(f"specdeck: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(run, indent=2))
        return 0
    s = run.get("summary") or {}
    lines = [
        ("run", run["run_id"]),
        ("status", run["status"] + (f": {run['error']}" if run.get("error") else "")),
        ("started", run.get("started", "?")),
        ("target", run["target_model"]),
        ("draft", run["draft_model"]),
        ("placement", f"{placement_text(run['placement'])} ({run['mode']})"),
        ("options", ", ".join(f"{k}={v}" for k, v in run["options"].items() if k != "prompt")),
        ("steps", str(len(run["steps"]))),
        ("mean acceptance length", _num(s.get("mean_acceptance_length"), ".2f")),
        ("acceptance rate", _num(s.get("acceptance_rate"), ".1%")),
        ("decode", _num(s.get("decode_tokens_per_s"), ".1f") + " tokens/s"),
        ("speedup", "n/a" if s.get("speedup") is None else f"{s['speedup']:.2f}x"),
        ("record", run["folder"]),
    ]
    if run["prompts"]:
        lines.insert(-1, ("prompts", f"{len(run['prompts'])} (one row each below)"))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    if run["prompts"]:
        print()
        print(prompt_table(run["prompts"]))
    return 0


def plot(run_ids: list[str], out: str | None) -> int:
    """Draw one run, or two overlaid, to a PNG and print its path; bad ids are one line, 2."""
    from app.plot_data import NothingToPlot, load_plot

    if not run_ids:
        print("specdeck: runs plot needs a run id (see `specdeck runs --help`)", file=sys.stderr)
        return 2
    try:
        plots = [load_plot(data_dir(), run_id) for run_id in run_ids]
    except (RunNotFound, NothingToPlot) as exc:
        print(f"specdeck: {exc}", file=sys.stderr)
        return 2
    path = Path(out if out else "-vs-".join(p.run_id for p in plots) + ".png")
    if path.suffix.lower() != ".png":
        print(f"specdeck: --out {path} must name a .png file", file=sys.stderr)
        return 2
    from app.plot_png import write_png

    try:
        write_png(plots, path)
    except OSError as exc:
        print(f"specdeck: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(path.resolve())
    return 0
