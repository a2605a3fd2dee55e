"""Check where each daemon's process shows up in NVML while a run goes on.

    python3 benchmarks/nvml_roles.py --target cuda:0 --draft cuda:1 [--json]

Starts a run through the supervisor (the demo pair by default, long enough to watch),
waits until the target decodes, lists every GPU's processes through specdeck's own NVML
backend, stops the run, and reports whether each daemon's pid appears on the GPUs it was
placed on and nowhere else. Exits 1 if not.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from backends.discovery import discover
from backends.placement import Placement, parse_device_ids
from engine.catalog import demo_pair, resolve_model
from ipc import events as ev
from ipc.run_spec import RunSpec, check_run
from ipc.runner import start_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--target-model")
    parser.add_argument("--draft-model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    target_info, draft_info = demo_pair()
    if args.target_model:
        target_info = resolve_model(args.target_model)
    if args.draft_model:
        draft_info = resolve_model(args.draft_model)
    placement = Placement(target=parse_device_ids(args.target), draft=args.draft)
    inventory = discover(None)
    decoding = threading.Event()

    def on_event(event: object) -> None:
        if isinstance(event, ev.StatusEvent | ev.StepEvent) and (
            isinstance(event, ev.StepEvent) or event.state == "decode"
        ):
            decoding.set()
        if isinstance(event, ev.ErrorEvent):
            print(f"error from {event.role}: {event.text}", file=sys.stderr)
            decoding.set()

    spec = RunSpec(
        target_model=str(target_info.path),
        draft_model=str(draft_info.path),
        target=placement.target,
        draft=placement.draft,
        mode=args.mode or placement.mode,
        k=4,
        prompts=("def fibonacci(n):\n",),
        max_new_tokens=1900,  # within the demo pair's 2048-token context
    )
    handle = start_run(check_run(spec, inventory), inventory=inventory, on_event=on_event)
    decoding.wait(300)
    seen: dict[str, list[str]] = {}
    for device in inventory.devices:
        if device.backend != "cuda" or device.simulated:
            continue
        for proc in inventory.sample(device).processes:
            seen.setdefault(str(proc.pid), []).append(device.id)
    pids = handle.pids
    handle.stop()
    handle.wait(30)
    report = {"placement": {"target": list(placement.target), "draft": placement.draft}}
    ok = bool(pids)
    for role, pid in pids.items():
        placed = list(placement.target) if role == "target" else [placement.draft]
        gpus_placed = sorted(d for d in placed if d.startswith("cuda:"))
        on = sorted(seen.get(str(pid), []))
        role_ok = on == gpus_placed
        ok = ok and role_ok
        report[role] = {"pid": pid, "placed_on": placed, "nvml_shows_on": on, "ok": role_ok}
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    inventory.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
