"""Write docs/screenshot.svg: the dashboard over `--simulate cuda:2,hip:1` during a demo run.

python3 -m tools.dashboard_screenshot [--out docs/screenshot.svg] [--no-run]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from app.config import load_config
from backends.discovery import discover
from backends.sampler import DeviceSampler

ROOT = Path(__file__).resolve().parents[1]


async def shoot(out: Path, run: bool) -> None:
    from app.dashboard import DashboardApp

    inventory = discover("cuda:2,hip:1")
    sampler = DeviceSampler(inventory, interval_s=0.5)
    app = DashboardApp(load_config(), inventory, sampler, refresh_s=0.5)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(3.0)  # a few samples of history
        # target on sim-cuda:0, draft on sim-hip:0 (cards: cpu, sim-cuda:0, sim-cuda:1, sim-hip:0)
        await pilot.press("t", "c", "right", "enter", "d", "right", "right", "enter")
        if run:
            await pilot.press("b", "l")
            deadline = time.monotonic() + 180
            while app.screen.live_run.busy and time.monotonic() < deadline:
                await pilot.pause(0.5)
            await pilot.pause(1.0)
        app.save_screenshot(filename=out.name, path=str(out.parent))
    sampler.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.svg"))
    parser.add_argument("--no-run", action="store_true", help="only place the roles")
    args = parser.parse_args()
    asyncio.run(shoot(Path(args.out), not args.no_run))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
