"""Split against in-process on one shared CPU, under thread settings given in the environment.

    python benchmarks/split_cpu_threads.py --n 2 --variant default --variant OMP_NUM_THREADS=8

Each variant is a list of NAME=VALUE settings (comma-separated) put into the environment of
`specdeck run` (the daemons inherit it). Prints one JSON document: per variant and mode, the
median decode tokens/s of `--n` fresh runs, and split / in-process.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def decode_rate(env: dict, mode: str, models: Path, tokens: int) -> float:
    argv = [
        sys.executable, "-m", "app.cli", "run", "--target-model", str(models / "target"),
        "--draft-model", str(models / "draft"), "--target", "cpu", "--draft", "cpu",
        "--mode", mode, "--max-new-tokens", str(tokens), "--json",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)["decode_tokens_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--models", default=str(ROOT / "engine" / "demo_models"))
    args = parser.parse_args()
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as data:
        for variant in args.variant or ["default"]:
            settings = dict(item.split("=", 1) for item in variant.split(",") if "=" in item)
            env = {**os.environ, "SPECDECK_DATA_DIR": data, "HF_HUB_OFFLINE": "1", **settings}
            rates = {mode: [] for mode in ("inprocess", "split")}
            for _ in range(args.n):  # alternate, so drift hits both modes alike
                for mode in rates:
                    rates[mode].append(decode_rate(env, mode, Path(args.models), args.tokens))
            medians = {mode: statistics.median(r) for mode, r in rates.items()}
            figures[variant] = {
                "tokens_per_s": rates,
                "median": medians,
                "split_over_inprocess": medians["split"] / medians["inprocess"],
            }
            print(variant, json.dumps(figures[variant]), file=sys.stderr, flush=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps({"machine": machine, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
