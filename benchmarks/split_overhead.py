"""Split vs in-process decode throughput: same models, same device, same prompts.

    .venv/bin/python benchmarks/split_overhead.py --target-model DIR --draft-model DIR \
        --device cpu --n 3 --tokens 128

Both modes go through the runner (daemons), so the only difference is the draft link:
in-process = one target daemon with a LocalDrafter; split = a target daemon plus a draft
daemon reached over ZeroMQ. Prints the machine and the figures; exits 1 under the goal.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.discovery import discover  # noqa: E402
from ipc.run_spec import RunSpec, check_run  # noqa: E402
from ipc.runner import start_run  # noqa: E402

PROMPTS = [
    "def fibonacci(n):\n",
    "import json\n\ndef load(path):\n",
    "class Stack:\n    def __init__(self):\n",
    "def quicksort(items):\n",
    "def parse_args(argv):\n",
]
GOAL = 0.95


def machine() -> str:
    import psutil

    return (
        f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{psutil.cpu_count(logical=True)} logical CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


def one_run(
    args: argparse.Namespace, mode: str, prompt: str, data_dir: str, transport: str = "ipc"
) -> dict:
    """One run's document: the models, device, k and tokens of `args`, in this mode."""
    spec = RunSpec(
        target_model=args.target_model,
        draft_model=args.draft_model,
        target=(args.device,),
        draft=args.device,
        mode=mode,
        k=args.k,
        prompts=(prompt,),
        max_new_tokens=args.tokens,
        transport=transport,
    )
    inventory = discover(args.simulate)
    handle = start_run(check_run(spec, inventory), inventory=inventory, data_dir=data_dir)
    result = handle.wait()
    if result is None:
        why = handle.error.text if handle.error else "?"
        raise SystemExit(f"{mode} run over {transport} failed: {why}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-model", required=True)
    parser.add_argument("--draft-model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--simulate")
    parser.add_argument("--n", type=int, default=3, help="prompts per mode")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()
    print(machine())
    rates: dict[str, list[float]] = {"inprocess": [], "split": []}
    transport: list[float] = []
    with tempfile.TemporaryDirectory() as data_dir:
        for i in range(args.n):
            prompt = PROMPTS[i % len(PROMPTS)]
            outputs = {}
            for mode in ("inprocess", "split") if i % 2 == 0 else ("split", "inprocess"):
                result = one_run(args, mode, prompt, data_dir)
                rates[mode].append(result["decode_tokens_per_s"] or 0.0)
                outputs[mode] = result["output_token_ids"]
                if mode == "split":
                    steps = max(result["steps"], 1)
                    transport.append(result.get("transport_s", 0.0) / steps)
            same = "same tokens" if outputs["inprocess"] == outputs["split"] else "TOKENS DIFFER"
            print(
                f"prompt {i}: in-process {rates['inprocess'][-1]:8.1f} tok/s   "
                f"split {rates['split'][-1]:8.1f} tok/s   ({same})"
            )
    inproc, split = statistics.median(rates["inprocess"]), statistics.median(rates["split"])
    ratio = split / inproc if inproc else 0.0
    print(
        f"median decode: in-process {inproc:.1f} tok/s, split {split:.1f} tok/s, "
        f"split/in-process {ratio:.3f} (goal >= {GOAL}); "
        f"transport {statistics.mean(transport) * 1e3:.2f} ms/step"
    )
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    sys.exit(main())
