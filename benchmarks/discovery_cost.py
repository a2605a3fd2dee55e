"""What device discovery costs a fresh interpreter: the vendor bindings' imports, NVML's
start-up and `discover()`, each timed in a new process (`--repeat` times), medians printed.

    PYTHONPATH=. python3 benchmarks/discovery_cost.py [--repeat 5] [--simulate cuda:4,hip:4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARTS = r"""
import json, sys, time
times = {}
t = time.perf_counter()
try:
    import pynvml
    times["import pynvml"] = time.perf_counter() - t
    t = time.perf_counter()
    pynvml.nvmlInit()
    times["nvmlInit"] = time.perf_counter() - t
except Exception as exc:
    times["pynvml"] = repr(exc)
t = time.perf_counter()
import backends.discovery as discovery
times["import backends.discovery"] = time.perf_counter() - t
t = time.perf_counter()
discovery.discover(sys.argv[1] or None).close()
times["discover()"] = time.perf_counter() - t
print(json.dumps(times))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--simulate", default="cuda:4,hip:4")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-c", PARTS, args.simulate],
            cwd=ROOT,
            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for name in runs[0]:
        values = [r[name] for r in runs]
        if all(isinstance(v, float) for v in values):
            ms = sorted(1e3 * v for v in values)
            print(f"{name:<28} median {statistics.median(ms):6.1f} ms  ({ms[0]:.1f}-{ms[-1]:.1f})")
        else:
            print(f"{name:<28} {values[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
