"""How fast the dashboard opens, and how much CPU it uses while idle.

    python3 -m benchmarks.startup [--simulate cuda:4,hip:4] [--idle 20] [--json]

1. Time to first frame: a fresh interpreter runs `specdeck` headless and exits on Textual's
   `Ready` event (the first frame is composed); measured on the monotonic clock from just
   before the process is spawned, so interpreter start, imports, device discovery and the
   first layout all count. Median of `--repeat` runs, interleaved with a bare Textual app
   (Header, Static, Footer) as the floor on this machine; the dashboard's own cost is the
   median of the paired differences.
2. Idle CPU: the dashboard with the simulated devices refreshing once a second, no run; CPU
   time of the whole process (UI, sampler thread) over `--idle` seconds. Under tmux (a real
   terminal, so screen output counts) when tmux is installed, else headless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

# each script prints the monotonic clock at its first frame; the parent took it at the spawn
FIRST_FRAME = r"""
import sys, time
from app.cli import build_parser
from app.commands.dashboard import build_app
from app.dashboard import DashboardApp

class FirstFrame(DashboardApp):
    def on_ready(self):
        sys.stderr.write(f"FIRST_FRAME {time.monotonic():.6f}\n")
        self.exit()

app = build_app(build_parser().parse_args(sys.argv[1:]), FirstFrame)
app.run(headless=True)
app.sampler.stop()
"""

BARE_TEXTUAL = r"""
import sys, time
from textual.app import App
from textual.widgets import Footer, Header, Static

class Bare(App):
    def compose(self):
        yield Header()
        yield Static("hello")
        yield Footer()

    def on_ready(self):
        sys.stderr.write(f"FIRST_FRAME {time.monotonic():.6f}\n")
        self.exit()

Bare().run(headless=True)
"""

IDLE_HEADLESS = r"""
import asyncio, sys, time, psutil
from app.config import load_config
from backends.discovery import discover
from backends.sampler import DeviceSampler
from app.dashboard import DashboardApp

async def main(spec, seconds):
    inventory = discover(spec)
    sampler = DeviceSampler(inventory, interval_s=1.0)
    app = DashboardApp(load_config(), inventory, sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(3.0)
        me = psutil.Process()
        before, t0 = me.cpu_times(), time.monotonic()
        await asyncio.sleep(seconds)
        after, t1 = me.cpu_times(), time.monotonic()
        used = (after.user - before.user) + (after.system - before.system)
        print(f"IDLE_CPU {100 * used / (t1 - t0):.2f}")

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def environment(tmp: str) -> dict[str, str]:
    """A private config and data folder, and the repository on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(
        SPECDECK_CONFIG=str(Path(tmp) / "config.toml"),
        SPECDECK_DATA_DIR=str(Path(tmp) / "data"),
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
    )
    return env


def _first_frame_once(code: str, args: list[str], env: dict[str, str]) -> float:
    """Seconds from just before the spawn to the first frame, both on the monotonic clock.

    (psutil's create_time() is not used: it counts from the boot time, which Linux gives in
    whole seconds, so on a VM it was off by a constant of up to a second.)
    """
    spawned = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("FIRST_FRAME")]
    if not lines:
        raise SystemExit(f"the app did not start:\n{out.stderr[-2000:]}")
    return float(lines[-1].split()[1]) - spawned


def first_frame(spec: str, repeat: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Seconds from process creation to the first frame: specdeck and a bare Textual app,
    interleaved so that both see the same machine load."""
    ours, bare = [], []
    for _ in range(repeat):
        ours.append(_first_frame_once(FIRST_FRAME, ["--simulate", spec], env))
        bare.append(_first_frame_once(BARE_TEXTUAL, [], env))
    return ours, bare


def idle_cpu_tmux(spec: str, seconds: float, env: dict[str, str]) -> float:
    """Percent of one core the dashboard uses in a 160x48 tmux window while idle."""
    sock = f"specdeck-bench-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith(("SPECDECK", "PYTHON")))
    command = f"cd {ROOT} && env -u COLUMNS -u LINES {exports} {sys.executable} -m app.cli "
    command += f"--simulate {spec}"
    subprocess.run([*tmux, "new-session", "-d", "-s", "b", "-x", "160", "-y", "48", command])
    try:
        time.sleep(4.0)  # start, discover, first samples
        pane = subprocess.run(
            [*tmux, "display", "-p", "-t", "b", "#{pane_pid}"], capture_output=True, text=True
        )
        shell = psutil.Process(int(pane.stdout.strip()))
        app = next(p for p in [shell, *shell.children(recursive=True)] if "app.cli" in p.cmdline())
        before, t0 = app.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, t1 = app.cpu_times(), time.monotonic()
        used = (after.user - before.user) + (after.system - before.system)
        return 100 * used / (t1 - t0)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def idle_cpu_headless(spec: str, seconds: float, env: dict[str, str]) -> float:
    """Percent of one core the dashboard uses headless while idle."""
    out = subprocess.run(
        [sys.executable, "-c", IDLE_HEADLESS, spec, str(seconds)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=seconds + 60,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("IDLE_CPU")]
    if not lines:
        raise SystemExit(f"the idle measurement failed:\n{out.stderr[-2000:]}")
    return float(lines[-1].split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", default="cuda:4,hip:4", help="simulated devices")
    parser.add_argument("--repeat", type=int, default=5, help="first-frame runs")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(tmp)
        frames, bare = first_frame(args.simulate, args.repeat, env)
        if shutil.which("tmux"):
            where, idle = "tmux 160x48", idle_cpu_tmux(args.simulate, args.idle, env)
        else:
            where, idle = "headless", idle_cpu_headless(args.simulate, args.idle, env)
    result = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, {platform.processor() or ''}"
        f" Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "simulate": args.simulate,
        "first_frame_s_median": round(statistics.median(frames), 3),
        "first_frame_s_all": [round(t, 3) for t in frames],
        "bare_textual_first_frame_s_median": round(statistics.median(bare), 3),
        "bare_textual_first_frame_s_all": [round(t, 3) for t in bare],
        "own_cost_s_median": round(
            statistics.median(a - b for a, b in zip(frames, bare, strict=True)), 3
        ),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "idle_cpu_percent_of_one_core": round(idle, 2),
        "idle_measured_in": where,
        "idle_seconds": args.idle,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:30} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
