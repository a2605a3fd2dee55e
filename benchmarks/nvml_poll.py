"""How long one telemetry reading of each NVIDIA GPU takes through specdeck's NVML backend.

    python3 -m benchmarks.nvml_poll [--n 2000] [--json]      (from the repository root)

One reading is one `NvmlBackend.sample()`: memory, utilization, power, power limit,
temperature, compute and graphics processes with their names. The dashboard's sampler makes
one per device per interval, so this must stay far below a millisecond.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from backends.base import BackendUnavailable
from backends.nvml import NvmlBackend


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted values lie (nearest rank)."""
    rank = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


def time_device(backend: NvmlBackend, device, n: int, warmup: int) -> dict:
    """Mean, median and p99 of n readings of one device, in microseconds."""
    for _ in range(warmup):
        backend.sample(device)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        backend.sample(device)
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return {
        "id": device.id,
        "name": device.name,
        "polls": n,
        "mean_us": round(statistics.fmean(times), 1),
        "p50_us": round(percentile(times, 0.50), 1),
        "p99_us": round(percentile(times, 0.99), 1),
        "max_us": round(times[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="readings per device")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    backend = NvmlBackend()
    try:
        devices = backend.discover()
    except BackendUnavailable as exc:
        print(f"nvml_poll: {exc}", file=sys.stderr)
        return 2
    try:
        report = {
            "driver": backend.driver_version(),
            "devices": [time_device(backend, d, args.n, args.warmup) for d in devices],
        }
    finally:
        backend.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"NVIDIA driver {report['driver']}, {len(devices)} GPU(s), {args.n} readings each")
    for row in report["devices"]:
        print(
            f"{row['id']:8} {row['name']:32} mean {row['mean_us']:8.1f} us  "
            f"p50 {row['p50_us']:8.1f} us  p99 {row['p99_us']:8.1f} us  max {row['max_us']:8.1f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
