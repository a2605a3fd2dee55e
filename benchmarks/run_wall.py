"""`specdeck run` on the demo pair as a user runs it: wall time of the whole command, decode
throughput and speedup, in both modes (before/after comparisons of the run path).

    python benchmarks/run_wall.py --n 3 [--device cpu] [--models DIR] > figures.json

Each run is a fresh `specdeck run --baseline --json` process (start-up, loading, warm-up,
decoding and shut-down all counted in the wall time). Prints one JSON document.
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

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--models", default=str(ROOT / "engine" / "demo_models"),
                        help="folder holding target/ and draft/")  # fmt: skip
    args = parser.parse_args()
    models = Path(args.models)
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "SPECDECK_DATA_DIR": data, "HF_HUB_OFFLINE": "1"}
        for mode in ("inprocess", "split"):
            walls, tps, speedups = [], [], []
            for _ in range(args.n):
                argv = [
                    sys.executable, "-m", "app.cli", "run", "--target-model",
                    str(models / "target"), "--draft-model", str(models / "draft"),
                    "--target", args.device, "--draft", args.device, "--mode", mode,
                    "--max-new-tokens", str(args.tokens), "--baseline", "--json",
                ]  # fmt: skip
                start = time.perf_counter()
                done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
                walls.append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"{mode}: {done.stderr.strip()[-500:]}")
                result = json.loads(done.stdout)
                tps.append(result["decode_tokens_per_s"])
                speedups.append(result["speedup"])
            figures[mode] = {
                "wall_s_median": statistics.median(walls),
                "wall_s": walls,
                "decode_tokens_per_s_median": statistics.median(tps),
                "speedup_median": statistics.median(speedups),
            }
    split, inproc = figures["split"], figures["inprocess"]
    doc = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "device": args.device,
        "tokens": args.tokens,
        "figures": figures,
        "split_over_inprocess": split["decode_tokens_per_s_median"]
        / inproc["decode_tokens_per_s_median"],
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
