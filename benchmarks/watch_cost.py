"""What watching a run costs the run: decode tokens/s of the demo pair, split over simulated
devices on the CPU (or the devices `--target`/`--draft` name), alone and watched from other
processes, in alternating repetitions.

    python benchmarks/watch_cost.py --n 5 [--tokens 400] [--watchers reader,dashboard] > cost.json
    python benchmarks/watch_cost.py --target cuda:0 --draft cuda:0 --tokens 1500 ...   # a GPU

Each repetition runs `specdeck run` (a fresh process, as a user runs it) once per condition,
in an order that alternates between repetitions so drift in the machine's load falls on
every condition alike:

- `alone`: nobody reads the run's watch endpoint (every run has one);
- `reader`: one `ipc.watch.WatchFeed` process reads every event and sample;
- `dashboard`: a second dashboard (headless, in a process of its own) lists the run as live,
  opens it with `w` and follows it to its end, as a user would.

A watcher attaches while the daemons load, before the first step, and must see the run to its
end (each says what it saw); a repetition where one did not is refused. Prints one JSON
document: per condition the decode tokens/s of each repetition, the median over repetitions
of tokens/s watched / tokens/s alone in the same repetition, and the CPU seconds the watcher
took as a share of those the run took (the CLI and its daemons) and, while it watched (its
start-up left out), as a share of one core: where no core is free, that share bounds what
watching can take from the run, however noisy its tokens/s. Also the run's own side, which
every run pays watched or not: the publisher's CPU per event, over the run's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: specdeck's packages beside benchmarks/
SIMULATE = "cuda:2,hip:1"
WAIT_S = 900  # a run of the demo pair on a loaded 2-core box, daemons' start included

READER = """
import json, sys, time
from ipc.watch import WatchFeed, live_runs
deadline = time.monotonic() + float(sys.argv[2])
while not (runs := live_runs(sys.argv[1])):
    if time.monotonic() > deadline:
        sys.exit("no live run appeared")
    time.sleep(0.01)
steps = samples = 0
states = []
with WatchFeed(runs[0]) as feed:
    feed.hello()
    cpu, wall = time.process_time(), time.monotonic()  # watching from here on
    for item in feed:
        kind = type(item).__name__
        steps += kind == "StepEvent"
        samples += kind == "Sample"
        if kind == "StatusEvent" and item.role == "run":
            states.append(item.state)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    print(json.dumps({"steps": steps, "samples": samples, "end": states, "missed": feed.missed,
                      "cpu_s": cpu, "wall_s": wall}))
"""

DASHBOARD = """
import asyncio, json, sys, time
from app.config import load_config
from app.dashboard import DashboardApp
from app.screens.runs import RunsScreen
from backends.discovery import discover
from backends.sampler import DeviceSampler

import collections
import textual.message_pump as message_pump

MESSAGES = collections.Counter()  # messages the app's widgets handled while it watched
_dispatch = message_pump.MessagePump._dispatch_message

async def counted(self, message):  # Textual's private hook: what a widget is sent
    MESSAGES[type(message).__name__] += 1
    return await _dispatch(self, message)

async def until(pilot, condition, what, limit_s, watching=False):
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"the second dashboard waited for {what} in vain")
        # a pilot's pause posts to every widget and waits for them all: no user's dashboard
        # does that, so while it watches this one sleeps (unless --poll pilot)
        if watching and sys.argv[3] == "sleep":
            await asyncio.sleep(0.05)
        else:
            await pilot.pause(0.05)

async def main():
    inventory = discover(sys.argv[1])
    sampler = DeviceSampler(inventory, interval_s=1.0)
    app = DashboardApp(load_config(), inventory, sampler)
    limit_s = float(sys.argv[2])
    async with app.run_test(size=(160, 48)) as pilot:
        main = app.screen
        await until(pilot, lambda: main.filled, "its panes", limit_s)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs view", limit_s)
        runs = app.screen
        await until(pilot, lambda: runs.live, "a live run", limit_s)
        await until(pilot, lambda: runs.query_one("RunsTable").row_count, "its row", limit_s)
        await pilot.press("w")
        await until(pilot, lambda: main.live_run.watched, "the watch", limit_s)
        message_pump.MessagePump._dispatch_message = counted
        cpu, wall = time.process_time(), time.monotonic()  # watching from here on
        await until(pilot, lambda: not main.live_run.busy, "the run's end", limit_s, True)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        message_pump.MessagePump._dispatch_message = _dispatch
        print(json.dumps({"end": [main.live_run.outcome], "text": len(main.live_run.output),
                          "cpu_s": cpu, "wall_s": wall, "messages": dict(MESSAGES)}))
        await pilot.press("ctrl+q")

asyncio.run(main())
"""


COUNTER = """
import sys
from ipc.watch import WatchFeed
feed = WatchFeed(sys.argv[1])
feed.hello()
print("ready", flush=True)
got = 0
while got < int(sys.argv[2]) and feed.next(30) is not None:
    got += 1
print(got, flush=True)
"""


def publisher_cpu_us_per_event(events: int) -> float:
    """CPU microseconds this process spends per event published (the run's side of watching:
    `publish` and the publisher thread's encoding and sending), one reader in another process."""
    from engine.metrics import StepRecord
    from ipc import events as ev
    from ipc.owners import process_identity
    from ipc.watch import QUEUE_LIMIT, RunHeader, WatchPublisher

    events = min(events, QUEUE_LIMIT)

    owner = process_identity()
    header = RunHeader(
        "bench", "t", "d", {"target": ["cpu"], "draft": "cpu"}, "split", {}, "/nonexistent",
        owner["pid"], owner["host"], owner["started"],
    )  # fmt: skip
    run_dir = Path(tempfile.mkdtemp(prefix="wp-", dir="/tmp"))
    publisher = WatchPublisher(run_dir, header)
    publisher.start()
    reader = subprocess.Popen(
        [sys.executable, "-c", COUNTER, publisher.endpoint, str(events)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        if reader.stdout.readline().strip() != "ready":
            raise SystemExit("the counting reader did not start")
        step = StepRecord(0, 4, 3, 4, 0.01, 0.02, 0.001, k=4)
        event = ev.StepEvent(step, (1, 2, 3, 4), " tok", 3.5, 0.75, (1.0, 0.5), 120.0, 40)
        started = time.process_time()
        for _ in range(events):
            publisher.publish(event)
        got = int(reader.stdout.readline())  # waits, using no CPU, for the last to arrive
        spent = time.process_time() - started
        if got != events or publisher.dropped:
            raise SystemExit(f"the reader got {got} of {events} events")
    finally:
        reader.kill()
        reader.wait()
        publisher.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return 1e6 * spent / events


def published(record: Path) -> int:
    """About how many items a run published: a step event per step line and a sample per
    device row of its record, and a few dozen status, log and daemon events."""
    lines = 0
    for name, header in (("steps.jsonl", 0), ("devices.csv", 1)):
        with open(record / name, encoding="utf-8") as f:
            lines += sum(1 for _ in f) - header
    return lines + 30


def children_cpu_s() -> float:
    """User and system CPU seconds of this process's children reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(condition: str, args: argparse.Namespace, data: Path, run_dirs: Path) -> dict:
    """One `specdeck run` with its watcher, if any; its decode tokens/s and what was seen."""
    env = {**os.environ, "SPECDECK_DATA_DIR": str(data), "TMPDIR": str(run_dirs)}
    env["HF_HUB_OFFLINE"] = "1"
    watcher = None
    if condition == "reader":
        watcher = [sys.executable, "-c", READER, str(data), str(WAIT_S)]
    elif condition == "dashboard":
        watcher = [sys.executable, "-c", DASHBOARD, SIMULATE, str(WAIT_S), args.poll]
    watching = None
    if watcher is not None:
        watching = subprocess.Popen(
            watcher, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    argv = [
        sys.executable, "-m", "app.cli", "--simulate", SIMULATE, "run",
        "--target", args.target, "--draft", args.draft, "--mode", "split",
        "--max-new-tokens", str(args.tokens), "--json",
    ]  # fmt: skip
    before, started = children_cpu_s(), time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    run_cpu_s = children_cpu_s() - before  # the CLI and its daemons, reaped by it
    run_wall_s = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{condition}: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout)
    figure = {
        "decode_tokens_per_s": result["decode_tokens_per_s"],
        "steps": result["steps"],
        "run_cpu_s": run_cpu_s,
        "run_wall_s": run_wall_s,
        "published": published(data / "runs" / result["run_id"]),
    }
    if watching is not None:
        before = children_cpu_s()
        out, err = watching.communicate(timeout=WAIT_S)
        figure["watcher_cpu_s"] = children_cpu_s() - before
        if watching.returncode != 0 or not out.strip():
            raise SystemExit(f"{condition}: the watcher failed: {err.strip()[-500:]}")
        seen = json.loads(out.strip().splitlines()[-1])
        if seen["end"] != ["done"] or seen.get("steps", result["steps"]) != result["steps"]:
            raise SystemExit(f"{condition}: the watcher did not see the whole run: {seen}")
        figure["seen"] = seen
    return figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="repetitions")
    parser.add_argument("--tokens", type=int, default=400, help="--max-new-tokens of each run")
    parser.add_argument("--watchers", default="reader,dashboard")
    parser.add_argument("--target", default="sim-cuda:0", help="the target's device (split run)")
    parser.add_argument("--draft", default="sim-hip:0", help="the draft's device")
    parser.add_argument("--poll", choices=("sleep", "pilot"), default="sleep",
                        help="how the second dashboard's script waits while it watches: "
                        "asyncio's sleep (as no user's dashboard polls), or Textual's pilot "
                        "pause (how it measured before: a round to every widget)")  # fmt: skip
    parser.add_argument("--publish-events", type=int, default=5000,
                        help="events of the publisher's own CPU measurement (at most "
                        "ipc.watch.QUEUE_LIMIT: they are queued at once)")  # fmt: skip
    args = parser.parse_args()
    per_event_us = publisher_cpu_us_per_event(args.publish_events)
    conditions = ["alone", *[w for w in args.watchers.split(",") if w]]
    figures: dict[str, list[dict]] = {c: [] for c in conditions}
    data = Path(tempfile.mkdtemp(prefix="watch-cost-"))
    run_dirs = Path(tempfile.mkdtemp(prefix="wc-", dir="/tmp"))  # short: socket paths
    try:
        for rep in range(args.n):
            order = conditions if rep % 2 == 0 else conditions[::-1]
            for condition in order:
                figures[condition].append(run_once(condition, args, data, run_dirs))
                print(f"rep {rep + 1}/{args.n} {condition}: "
                      f"{figures[condition][-1]['decode_tokens_per_s']:.1f} tok/s",
                      file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(run_dirs, ignore_errors=True)
    alone = [f["decode_tokens_per_s"] for f in figures["alone"]]
    report = {
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        },
        "tokens": args.tokens,
        "placement": {"target": args.target, "draft": args.draft, "mode": "split"},
        # every run publishes, watched or not: its events x this, over the run's CPU
        "publisher_cpu_us_per_event": per_event_us,
        "publisher_cpu_percent_of_run_median": statistics.median(
            100 * f["published"] * per_event_us / 1e6 / f["run_cpu_s"] for f in figures["alone"]
        ),
        "repetitions": args.n,
        "decode_tokens_per_s": {
            c: [f["decode_tokens_per_s"] for f in figures[c]] for c in conditions
        },
        "median_decode_tokens_per_s": {
            c: statistics.median(f["decode_tokens_per_s"] for f in figures[c]) for c in conditions
        },
    }
    for condition in conditions[1:]:
        watched = [f["decode_tokens_per_s"] for f in figures[condition]]
        ratios = [w / a for w, a in zip(watched, alone, strict=True)]
        watcher_share = [f["watcher_cpu_s"] / f["run_cpu_s"] for f in figures[condition]]
        watching = [f["seen"]["cpu_s"] / f["seen"]["wall_s"] for f in figures[condition]]
        report[f"{condition}_over_alone"] = {
            "ratios": ratios,
            "median": statistics.median(ratios),
            "cost_percent_median": 100 * (1 - statistics.median(ratios)),
            # the CPU the watcher took, as a share of the CPU the run took: on a machine
            # with no core to spare, about what watching can cost the run at most
            "watcher_cpu_percent_of_run_median": 100 * statistics.median(watcher_share),
            # while it watches (its start-up and imports left out): the share of one core
            # it takes, against the cores the run keeps busy
            "watcher_cpu_percent_of_a_core_while_watching_median": 100
            * statistics.median(watching),
        }
        if condition == "dashboard":  # what its widgets were sent while it watched
            seen = [f["seen"] for f in figures[condition]]
            report[f"{condition}_over_alone"]["messages_per_s_while_watching_median"] = (
                statistics.median(sum(x["messages"].values()) / x["wall_s"] for x in seen)
            )
            report[f"{condition}_over_alone"]["callback_share_of_messages_median"] = (
                statistics.median(
                    x["messages"].get("Callback", 0) / max(1, sum(x["messages"].values()))
                    for x in seen
                )
            )
    report["run_cores_busy_median"] = statistics.median(
        f["run_cpu_s"] / f["run_wall_s"] for f in figures["alone"]
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
