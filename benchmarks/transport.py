"""tcp + CURVE against ipc: per-step transport time of the draft link, and split throughput.

    .venv/bin/python benchmarks/transport.py --device cpu --steps 300 --n 3 --tokens 128

1. Per-step transport (goal <= 1.0 ms over tcp + CURVE on loopback): a real draft daemon
   (the bundled demo draft unless --draft-model) and a `RemoteDrafter` in this process, over
   each transport in turn; greedy steps of `propose(k)` + `commit`, the k=6 round trip the
   target daemon makes. Transport = round trip minus the daemon's own compute, as runs
   record it (`StepRecord.transport_s`); median and p90 over the steps.
2. Split over tcp against split over ipc (goal >= 0.9): whole runs of the demo pair through
   the runner, alternating the order; median decode tokens/s of each, same tokens checked.
Prints the machine and the figures; exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from split_overhead import PROMPTS, machine, one_run  # noqa: E402

from backends.discovery import discover  # noqa: E402
from ipc.launch import PlacedRole, daemon_launch  # noqa: E402
from ipc.remote_drafter import RemoteDrafter  # noqa: E402
from ipc.supervisor import Supervisor  # noqa: E402
from ipc.transport import Transport  # noqa: E402

STEP_GOAL_S = 1.0e-3
THROUGHPUT_GOAL = 0.9
CONTEXT_BUDGET = 1024  # tokens of a session before it begins again (the demo draft has 2048)


def step_transport(kind: str, args: argparse.Namespace) -> list[float]:
    """Seconds of transport of each greedy step (propose k, commit) to a live draft daemon."""
    k, steps = args.k, args.steps
    device = next(d for d in discover(args.simulate).devices if d.id == args.device)
    sup = Supervisor(transport=Transport(kind))
    try:
        placed = PlacedRole("draft", args.draft_model, (device,))
        sup.start(daemon_launch(placed, sup.site, run_id="bench", backend_python={}))
        endpoint = sup.control_endpoint("draft")
        sockopts = sup.keys.party("target").client_options("draft") if sup.keys else None
        drafter = RemoteDrafter(endpoint, timeout_s=60.0, sockopts=sockopts)
        drafter.hello(timeout_s=600.0)  # answered once the model is loaded
        prompt = [1 + i % 100 for i in range(16)]
        per_step: list[float] = []
        while len(per_step) < steps:
            drafter.begin(prompt, 0.0, 0)
            drafter.commit(0, prompt[-1])  # the prefill's token
            used = len(prompt) + 1
            while used + k + 1 < CONTEXT_BUDGET and len(per_step) < steps:
                proposal = drafter.propose(k)
                drafter.commit(len(proposal.tokens), proposal.tokens[-1])
                used += len(proposal.tokens) + 1
                per_step.append(drafter.take_transport_s())
        drafter.shutdown()
        drafter.close()
        return per_step[5:]  # the first steps of a fresh connection warm its buffers up
    finally:
        sup.stop()


def main() -> int:
    from engine.catalog import demo_pair

    target, draft = demo_pair()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-model", default=str(target.path))
    parser.add_argument("--draft-model", default=str(draft.path))
    parser.add_argument("--device", default="cpu", help="both roles' device")
    parser.add_argument("--simulate")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300, help="steps per transport (part 1)")
    parser.add_argument("--n", type=int, default=3, help="runs per transport (part 2)")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    print(machine())
    ok = True
    medians = {}
    for kind in ("ipc", "tcp"):
        t0 = time.perf_counter()
        each = sorted(step_transport(kind, args))
        medians[kind] = statistics.median(each)
        p90 = each[int(0.9 * (len(each) - 1))]
        print(
            f"per-step transport, {kind:3}: median {medians[kind] * 1e3:.3f} ms, "
            f"p90 {p90 * 1e3:.3f} ms over {len(each)} steps of k={args.k} "
            f"({time.perf_counter() - t0:.0f} s with loading)"
        )
    ok &= medians["tcp"] <= STEP_GOAL_S
    print(
        f"tcp+CURVE - ipc: {(medians['tcp'] - medians['ipc']) * 1e3:+.3f} ms/step; "
        f"tcp+CURVE {medians['tcp'] * 1e3:.3f} ms/step (goal <= {STEP_GOAL_S * 1e3:.1f} ms)"
    )
    if args.n == 0:
        return 0 if ok else 1
    rates: dict[str, list[float]] = {"ipc": [], "tcp": []}
    with tempfile.TemporaryDirectory() as data_dir:
        for i in range(args.n):
            prompt = PROMPTS[i % len(PROMPTS)]
            outputs = {}
            for kind in ("ipc", "tcp") if i % 2 == 0 else ("tcp", "ipc"):
                result = one_run(args, "split", prompt, data_dir, kind)
                rates[kind].append(result["decode_tokens_per_s"] or 0.0)
                outputs[kind] = result["output_token_ids"]
            same = "same tokens" if outputs["ipc"] == outputs["tcp"] else "TOKENS DIFFER"
            ok &= outputs["ipc"] == outputs["tcp"]
            print(
                f"prompt {i}: split over ipc {rates['ipc'][-1]:8.1f} tok/s   "
                f"over tcp {rates['tcp'][-1]:8.1f} tok/s   ({same})"
            )
    ipc, tcp = statistics.median(rates["ipc"]), statistics.median(rates["tcp"])
    ratio = tcp / ipc if ipc else 0.0
    ok &= ratio >= THROUGHPUT_GOAL
    print(
        f"median decode: split over ipc {ipc:.1f} tok/s, over tcp+CURVE {tcp:.1f} tok/s, "
        f"tcp/ipc {ratio:.3f} (goal >= {THROUGHPUT_GOAL})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    sys.exit(main())
