"""How long `specdeck --cluster ADDRESS` takes to show every host of a two-node cluster.

    python3 benchmarks/cluster_board.py [--repeat 5] [--json]

A two-node Ray cluster is started on this machine (`ray.cluster_utils.Cluster`; the head
simulates cuda:2 by its node label, the other node cuda:1 by its environment), not timed.
Then, `--repeat` times, a fresh interpreter opens the dashboard headless with `--cluster`
and reports the monotonic clock at its first frame and at the first frame whose device grid
holds cards of both hosts; both are measured from just before the process is spawned, so
interpreter start, imports (Ray's among them), joining the cluster, starting a probe actor on
each node and their first reports all count. Goal: both hosts on the board within 3 s.
`--address` uses a running cluster instead (tests/test_cluster.py does, with `--repeat 1`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the marks go to the real stderr: while the app runs, Textual captures sys.stderr
CHILD = r"""
import asyncio, sys, time
from app.cli import build_parser
from app.commands.dashboard import build_app
from app.widgets.devices import DeviceCard

async def main(address):
    app = build_app(build_parser().parse_args(["--cluster", address]))
    async with app.run_test(size=(160, 48)) as pilot:
        sys.__stderr__.write(f"FIRST_FRAME {time.monotonic():.6f}\n")
        deadline = time.monotonic() + 60
        while len({c.device.host for c in app.screen.query(DeviceCard) if c.device.host}) < 2:
            if time.monotonic() > deadline:
                raise SystemExit(f"no two hosts in 60 s: {app.sampler.inventory.unavailable}")
            await pilot.pause(0.01)
        sys.__stderr__.write(f"BOTH_HOSTS {time.monotonic():.6f}\n")

asyncio.run(main(sys.argv[1]))
"""


def once(address: str, env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first frame, seconds to both hosts on the board), from the spawn."""
    spawned = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, address],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    marks = dict(
        line.split()[:2] for line in out.stderr.splitlines() if line.startswith(("FIRST", "BOTH"))
    )
    if "BOTH_HOSTS" not in marks or "FIRST_FRAME" not in marks:
        raise SystemExit(f"the dashboard never showed both hosts: {out.stderr[-2000:]}")
    return float(marks["FIRST_FRAME"]) - spawned, float(marks["BOTH_HOSTS"]) - spawned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--address", help="a running cluster's (default: start a two-node one)")
    args = parser.parse_args()
    started = time.monotonic()
    nodes = None
    if args.address is None:
        from backends.cluster import start_local_cluster

        nodes, _ = start_local_cluster()
    address = args.address or nodes.address
    cluster_s = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "SPECDECK_CONFIG": str(Path(tmp) / "config.toml"),
            "SPECDECK_DATA_DIR": str(Path(tmp) / "data"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        runs = [once(address, env) for _ in range(args.repeat)]
    if nodes is not None:
        nodes.shutdown()
    first = [r[0] for r in runs]
    both = [r[1] for r in runs]
    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "cluster_start_s": round(cluster_s, 2),
        "first_frame_s": [round(x, 3) for x in first],
        "both_hosts_s": [round(x, 3) for x in both],
        "both_hosts_median_s": round(statistics.median(both), 3),
        "goal_s": 3.0,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}, load average {os.getloadavg()[0]:.1f}")
    print(f"two-node cluster started in {cluster_s:.1f} s (not counted)")
    for i, (f, b) in enumerate(runs):
        print(f"run {i + 1}: first frame {f:.2f} s, both hosts on the board {b:.2f} s")
    print(
        f"both hosts: median {statistics.median(both):.2f} s, max {max(both):.2f} s (goal <= 3.0 s)"
    )


if __name__ == "__main__":
    main()
