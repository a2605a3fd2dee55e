"""When the GPUs' cards arrive: the dashboard discovers NVML and amdsmi devices on the
sampler's thread after the first frame; this prints the cards of the first frame, the cards
once they change (and how long after that was), and the backends that were unavailable.

    PYTHONPATH=. python3 benchmarks/gpu_cards.py [--simulate cuda:1]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.cli import build_parser  # noqa: E402
from app.commands.dashboard import build_app  # noqa: E402
from app.widgets.devices import DeviceCard  # noqa: E402

WAIT_S = 5.0


async def watch(argv: list[str]) -> None:
    app = build_app(build_parser().parse_args(argv))
    async with app.run_test(size=(160, 48)) as pilot:
        first = [c.device.id for c in app.screen.query(DeviceCard)]
        start = time.monotonic()
        cards = first
        while cards == first and time.monotonic() - start < WAIT_S:
            await pilot.pause(0.02)
            cards = [c.device.id for c in app.screen.query(DeviceCard)]
        print("first frame cards:", first)
        print(f"cards after {time.monotonic() - start:.2f} s:", cards)
        print("unavailable:", [(u.backend, u.reason) for u in app.sampler.inventory.unavailable])
    app.sampler.stop()


if __name__ == "__main__":
    asyncio.run(watch(sys.argv[1:]))
