"""How long `/metrics` takes to answer with 8 (simulated) GPUs and a live run.

    python3 -m benchmarks.metrics_latency [--simulate cuda:8] [--scrapes 2000] [--interval 0.05]
                                          [--target sim-cuda:0] [--draft sim-cuda:1] [--json]
    python3 -m benchmarks.metrics_latency --simulate cuda:7 --target cuda:0 --draft cuda:0  # a GPU

A real run of the bundled demo pair decodes on this machine's CPU (target on sim-cuda:0, draft
on sim-cuda:1, split mode: two daemons; the simulated GPUs run their work on the host), or on
the devices `--target` and `--draft` name (a real GPU beside simulated cards), for as
long as the measurement lasts: a time-bound workload, stopped once done. Two servers are
scraped while it goes on, one after the other:

1. in-run: `specdeck run --metrics-port`'s server (`app.exporter.RunMetricsServer`), in the
   process that runs the run, fed from the run's events;
2. exporter: `specdeck exporter` in a process of its own, following the run through its watch
   endpoint, with its own sampler over the same simulated devices and the CPU;
3. render: no HTTP, the in-run registry collected and formatted in this process — the work a
   scrape asks of the server, apart from the network and the wait for a CPU.

Each scrape is a fresh HTTP GET with urllib (connect, request, the whole body read), timed on
the monotonic clock, `--interval` apart (back to back, the scraping loop itself would take a
core from the run it measures beside). Reported: the median, p99 and max of `--scrapes` of
them, the body's size and series count, and the run's steps meanwhile. The run is checked to
be live before and after each series.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 10.0


def render_once(registry: object) -> tuple[float, bytes]:
    """Seconds to collect and format the page in-process (what a scrape makes the server do)."""
    from prometheus_client import generate_latest

    started = time.perf_counter()
    body = generate_latest(registry)
    return time.perf_counter() - started, body


def scrape_once(url: str) -> tuple[float, bytes]:
    """Seconds for one whole scrape, and the body."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = reply.read()
    return time.perf_counter() - started, body


def measure(scrape: Callable[[], tuple[float, bytes]], scrapes: int, interval_s: float) -> dict:
    """`scrapes` timed scrapes, `interval_s` apart, after a few untimed ones (the first
    connection's set-up)."""
    for _ in range(20):
        scrape()
    times, body = [], b""
    for _ in range(scrapes):
        seconds, body = scrape()
        times.append(seconds * 1000)
        time.sleep(interval_s)
    times.sort()
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    return {
        "scrapes": scrapes,
        "median_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
        "max_ms": round(times[-1], 3),
        "body_bytes": len(body),
        "series": len(lines),
    }


def run_is_live(url: str, run_id: str) -> bool:
    """Whether the scrape shows the run in one of its live phases."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = scrape_once(url)
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "specdeck_run_phase":
            for sample in family.samples:
                if sample.labels.get("run_id") == run_id and sample.value == 1:
                    return sample.labels["phase"] not in ("done", "stopped", "failed")
    return False


def wait_for(check, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"metrics_latency: waited {timeout_s:.0f} s for {what}")
        time.sleep(0.2)


def start_exporter(simulate: str, env: dict) -> tuple[subprocess.Popen, str]:
    """`specdeck exporter --port 0` in its own process, and the URL it says it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "--simulate", simulate, "exporter", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([process.stderr], [], [], 60)
    line = process.stderr.readline() if ready else ""
    if not line.startswith("specdeck: serving "):
        process.kill()
        raise SystemExit(f"metrics_latency: the exporter did not start: {line!r}")
    return process, line.split()[-1]


def machine() -> dict:
    import psutil

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", default="cuda:8")
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between scrapes (default: 0.05)"
    )
    parser.add_argument("--target", default="sim-cuda:0", help="the target's device (split run)")
    parser.add_argument("--draft", default="sim-cuda:1", help="the draft's device")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    data = tempfile.mkdtemp(prefix="metrics-latency-")
    os.environ["SPECDECK_DATA_DIR"] = data  # this run's record, and the exporter's runs
    from app.exporter import RunMetricsServer
    from backends.discovery import discover
    from ipc.run_spec import RunSpec, check_run
    from ipc.runner import start_run

    inventory = discover(args.simulate)
    spec = RunSpec(
        target=(args.target,),
        draft=args.draft,
        mode="split",
        max_new_tokens=64,
        duration="30m",  # goes on until stopped below
    )
    in_run = RunMetricsServer(inventory, 0)
    run = check_run(spec, inventory)
    handle = start_run(
        run, inventory=inventory, sampler=in_run.sampler, on_event=in_run.run.observe, data_dir=data
    )
    in_run.started(run, handle.run_id)
    exporter, exporter_url = start_exporter(args.simulate, dict(os.environ))
    results = {}
    try:
        wait_for(lambda: in_run.run.figures().steps > 0, "the run's first step")
        registry = in_run.exporter.registry
        series = (
            ("in-run", in_run.server.url, lambda: scrape_once(in_run.server.url)),
            ("exporter", exporter_url, lambda: scrape_once(exporter_url)),
            ("render", in_run.server.url, lambda: render_once(registry)),
        )
        for name, url, scrape in series:
            wait_for(lambda url=url: run_is_live(url, handle.run_id), f"the run on {name}")
            steps_before = in_run.run.figures().steps
            results[name] = measure(scrape, args.scrapes, args.interval)
            results[name]["run_steps_meanwhile"] = in_run.run.figures().steps - steps_before
            if not run_is_live(url, handle.run_id):
                raise SystemExit(f"metrics_latency: the run ended during the {name} series")
    finally:
        handle.stop()
        handle.wait(60)
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(30)
        in_run.close()
        inventory.close()
    steps = in_run.run.figures().steps
    document = {
        "machine": machine(),
        "simulate": args.simulate,
        "devices": len(inventory.devices),
        "placement": {"target": args.target, "draft": args.draft, "mode": "split"},
        "run": {"id": handle.run_id, "model": run.target_name, "mode": run.mode, "steps": steps},
        "interval_s": args.interval,
        "goal_ms": GOAL_MS,
        "results": results,
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(
            f"{document['devices']} devices ({args.simulate} + the CPU), a live split run of "
            f"{run.target_name} ({steps} steps by the end); {args.scrapes} scrapes each, "
            f"{args.interval * 1000:.0f} ms apart"
        )
        for name, r in results.items():
            verdict = "under" if r["p99_ms"] < GOAL_MS else "OVER"
            print(
                f"  {name:<9} median {r['median_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                f"max {r['max_ms']:.2f} ms  ({r['series']} series, {r['body_bytes']} bytes; "
                f"{r['run_steps_meanwhile']} run steps meanwhile; p99 {verdict} {GOAL_MS:.0f} ms)"
            )
        print(f"  machine: {document['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
