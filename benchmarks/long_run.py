"""A long run from the dashboard: the record stays complete and the dashboard's memory flat.

    python benchmarks/long_run.py --duration 30m [--settle 5m] [--out FILE.json]

The dashboard (real widgets, headless: Textual's test driver, the same app `specdeck` opens)
places the demo pair's target on a simulated CUDA card and its draft on another (split mode:
two daemons, decoding on the CPU), sets the workload's duration and launches. While the run
goes on, the dashboard process's resident memory is read every `--every` seconds. At the end
the run's record is read back: its status, its steps and one row per prompt. Prints (and
writes with --out) one JSON document: the RSS series, the growth after `--settle`, the
record's counts. Exits 1 if the run did not end `done` or its record is incomplete.

Short runs of this script are a test (tests/app/test_long_run_bench.py); the 30-minute figure
is in docs/validation.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import data_dir, load_config  # noqa: E402
from backends.discovery import discover  # noqa: E402
from backends.sampler import DeviceSampler  # noqa: E402
from ipc.records import load_run  # noqa: E402
from ipc.run_spec import parse_duration  # noqa: E402

START_S = 300.0  # daemons' start and the demo pair's load, on a loaded 2-core box


async def until(pilot, condition, what: str, limit_s: float) -> None:
    """Let the app run until `condition()` holds; SystemExit naming `what` after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"long_run: waited {limit_s:g} s for {what}")
        await asyncio.sleep(0.05)  # the app shares this loop (pilot.pause would wait for idle)


async def drive(duration_s: float, every_s: float) -> tuple[list[tuple[float, int]], dict]:
    """Launch from the dashboard, sample its RSS until the run ends; (samples, run's ending)."""
    from app.dashboard import DashboardApp

    inventory = discover("cuda:2")
    sampler = DeviceSampler(inventory, interval_s=0.5)
    app = DashboardApp(load_config(), inventory, sampler, refresh_s=0.25)
    me = psutil.Process()
    samples: list[tuple[float, int]] = []
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.filled, "the run controls", 60)
        models = screen.query_one("#models")
        await until(pilot, lambda: models.target is not None, "the catalog scan", 60)
        screen.query_one("#duration").value = f"{duration_s:g}s"
        if not (screen.place("target", "sim-cuda:0") and screen.place("draft", "sim-cuda:1")):
            raise SystemExit("long_run: the dashboard refused the placement")
        screen.action_launch()
        run = screen.live_run
        await until(pilot, lambda: run.handle is not None or run.outcome, "the launch", 60)
        if run.handle is None:
            raise SystemExit(f"long_run: the launch was refused: {_notices(app)}")
        run_id, started = run.handle.run_id, time.monotonic()
        next_at = started
        while run.handle is not None:
            if time.monotonic() >= next_at:
                samples.append((time.monotonic() - started, me.memory_info().rss))
                next_at += every_s
            await asyncio.sleep(0.2)
            if time.monotonic() - started > duration_s + START_S + 600:
                raise SystemExit("long_run: the run did not end after its duration")
        samples.append((time.monotonic() - started, me.memory_info().rss))
        ending = {"run_id": run_id, "outcome": run.outcome, "notices": _notices(app)}
        await pilot.press("ctrl+q")
    return samples, ending


def _notices(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="30m", help="the run's time bound (90s, 30m, 2h)")
    parser.add_argument("--settle", default="5m", help="RSS growth is counted after this")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS reads")
    parser.add_argument("--out", help="also write the JSON document here")
    args = parser.parse_args()
    duration_s, settle_s = parse_duration(args.duration), parse_duration(args.settle)
    samples, ending = asyncio.run(drive(duration_s, args.every))
    record = load_run(data_dir(), ending["run_id"])
    prompts, summary = record["prompts"], record.get("summary") or {}
    after = [rss for t, rss in samples if t >= settle_s]
    growth = (max(after) - after[0]) if after else None
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": duration_s,
        "settle_s": settle_s,
        "run": {
            **ending,
            "status": record.get("status"),
            "prompts_done": len(prompts),
            "steps_recorded": len(record["steps"]),
            "new_tokens": summary.get("new_tokens"),
            "decode_tokens_per_s": summary.get("decode_tokens_per_s"),
            "record": record["folder"],
        },
        "rss_mb": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in samples],
        "rss_growth_after_settle_mb": None if growth is None else round(growth / 2**20, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    complete = record.get("status") == "done" and prompts and record["steps"]
    return 0 if ending["outcome"] == "done" and complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
