"""`specdeck bench`: a prompt suite through one or more placements, target-only beside
speculative decoding (and transformers' assisted generation with `--peers hf`); a table,
and bench.json, bench.md and bench.png in the output folder.

Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.commands import run as run_command

if TYPE_CHECKING:
    from ipc.bench import BenchPrompt, PlacementSpec, Settings


def main(args: argparse.Namespace) -> int:
    # before torch is imported anywhere, so that torch's cuda:N is NVML's index N
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    from app.config import data_dir
    from ipc import bench
    from ipc.records import new_run_id

    specs = bench.read_placements(args.placements) if args.placements else [bench.PlacementSpec("")]
    requests = [run_command.build_request(_args_for(args, spec)) for spec in specs]
    suite, prompts = _prompts(args)
    check_contexts(requests, prompts, args.max_new_tokens)
    settings = bench.Settings(
        k=requests[0].k,
        temperature=args.temperature,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
    )
    bench_id = new_run_id()
    out_dir = Path(args.out).expanduser() if args.out else data_dir() / "bench" / bench_id
    peers = sorted(set(args.peers))
    placements: list[dict[str, Any]] = []
    document = {
        "bench_id": bench_id,
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suite": suite,
        "prompts": [{"id": p.id, "chars": len(p.text)} for p in prompts],
        "settings": {
            "k": settings.k,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "max_new_tokens": settings.max_new_tokens,
            "warmup_tokens": settings.warmup_tokens,
        },
        "peers": peers,
        "out_dir": str(out_dir),
        "placements": placements,
        "rows": [],
    }
    total = len(requests) * len(prompts) * (1 + len(peers))
    with BenchProgress(total, enabled=sys.stderr.isatty()) as progress:
        for spec, request in zip(specs, requests, strict=True):
            placements.append(
                run_placement(spec, request, prompts, settings, peers, progress, args, bench_id)
            )
            document["rows"] = bench.table_rows(placements)
            # written after every placement, so a bench cut short keeps what it measured
            bench.write_outputs(document, out_dir, chart=False)
    notes = bench.write_outputs(document, out_dir)
    for note in notes:
        print(f"specdeck: {note}", file=sys.stderr)
    where = f"results in {out_dir} (bench.json, bench.md{'' if notes else ', bench.png'})"
    if args.json:
        print(json.dumps(document, indent=2))
        print(where, file=sys.stderr)
    else:
        print_table(document["rows"])
        print(where)
    return 1 if any(p["error"] for p in placements) else 0


def _args_for(args: argparse.Namespace, spec: PlacementSpec) -> argparse.Namespace:
    """The command line's options with a placement's own values put over them."""
    values = dict(vars(args))
    for key in ("target", "draft", "mode", "target_model", "draft_model"):
        if getattr(spec, key) is not None:
            values[key] = getattr(spec, key)
    values["baseline"] = True  # a bench always decodes target-only for the speedup
    return argparse.Namespace(**values)


def check_contexts(
    requests: list[run_command.RunRequest], prompts: list[BenchPrompt], max_new_tokens: int
) -> None:
    """Refuse, before anything loads, a prompt that leaves no room in a model's context."""
    from app.run_options import run_context_problem
    from engine.errors import EngineInputError

    for request in requests:
        for prompt in prompts:
            problem = run_context_problem(
                request.target, request.draft, prompt.text, max_new_tokens, request.k
            )
            if problem:
                raise EngineInputError(f"prompt {prompt.id}: {problem}")


def _prompts(args: argparse.Namespace) -> tuple[str, list[BenchPrompt]]:
    """(suite name, prompts): --prompt/--prompt-file give one prompt, else the suite's."""
    from ipc.bench import BenchPrompt, suite_prompts

    if args.prompt is not None or args.prompt_file is not None:
        return "prompt", [
            BenchPrompt("prompt", run_command.read_prompt(args.prompt, args.prompt_file))
        ]
    return args.suite, suite_prompts(args.suite, args.n, args.sample, args.seed)


def run_placement(
    spec: PlacementSpec,
    request: run_command.RunRequest,
    prompts: list[BenchPrompt],
    settings: Settings,
    peers: list[str],
    progress: BenchProgress,
    args: argparse.Namespace,
    bench_id: str,
) -> dict[str, Any]:
    """Bench one placement (and its peers); a failure is kept in `error`, not raised."""
    from ipc.bench import BenchRunFailed
    from ipc.records import placement_text

    placement = {"target": list(request.placement.target), "draft": request.placement.draft}
    entry: dict[str, Any] = {
        "name": spec.name or placement_text(placement),
        "placement": placement,
        "simulated_devices": sorted(i for i, d in request.devices.items() if d.simulated),
        "mode": request.mode,
        "target_model": request.target.name,
        "draft_model": request.draft.name,
        "run_id": None,
        "result": None,
        "error": None,
        "peers": {},
    }
    name = entry["name"]
    loaded: tuple[Any, Any] | None = None
    try:
        if request.mode == "split":
            progress.phase(f"{name}: starting daemons")
            entry["result"] = _split(request, prompts, settings, progress, name, args)
        else:
            progress.phase(f"{name}: loading models")
            loaded = _load(request)
            entry["result"] = _inprocess(
                request, loaded, prompts, settings, progress, name, bench_id
            )
        entry["run_id"] = entry["result"].get("run_id")
    except (BenchRunFailed, RuntimeError, OSError, ValueError) as exc:
        entry["error"] = _one_line(exc)
        print(f"specdeck: placement {name} failed: {entry['error']}", file=sys.stderr)
        progress.advance(len(prompts) * (1 + len(peers)))
        return entry
    finally:
        if entry["error"] is not None:
            loaded = None
            _release_memory()
    for peer in peers:
        entry["peers"][peer] = _peer(
            request, loaded, entry["result"], prompts, settings, progress, name
        )
    loaded = None
    _release_memory()
    return entry


def _load(request: run_command.RunRequest) -> tuple[Any, Any]:
    """Both models into this process on the placement's devices."""
    from ipc.bench import load_pair

    vendors = {
        d.backend for d in request.devices.values() if not d.simulated and d.backend != "cpu"
    }
    if len(vendors) > 1:
        raise ValueError(
            f"one process cannot drive {' and '.join(sorted(vendors))} devices together"
        )
    return load_pair(
        request.target,
        request.draft,
        [run_command.inprocess_torch_device(d) for d in request.target_devices],
        run_command.inprocess_torch_device(request.draft_device),
        vendor=next(iter(vendors), "cpu"),
        trust_target=request.trust_target_code,
        trust_draft=request.trust_draft_code,
    )


def _inprocess(
    request: run_command.RunRequest,
    loaded: tuple[Any, Any],
    prompts: list[BenchPrompt],
    settings: Settings,
    progress: BenchProgress,
    name: str,
    bench_id: str,
) -> dict[str, Any]:
    """Speculative and target-only decoding in this process, recorded as one run."""
    from ipc.bench import inprocess_session

    recorder = run_command.open_record(
        request, {**_options(settings), "bench": bench_id, "prompts": len(prompts)}
    )
    progress.phase(f"{name}: warm-up and prompts")
    try:
        result = inprocess_session(
            *loaded, prompts, settings, on_prompt=lambda i, _: progress.advance(), recorder=recorder
        )
    except BaseException as exc:
        recorder.fail(_one_line(exc))
        raise
    result["run_id"] = recorder.run_id
    recorder.finish({k: v for k, v in result.items() if k != "prompts"})
    return result


def _split(
    request: run_command.RunRequest,
    prompts: list[BenchPrompt],
    settings: Settings,
    progress: BenchProgress,
    name: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One daemon session (ipc.runner) over every prompt."""
    from app.config import data_dir, load_config
    from backends.discovery import discover
    from ipc import events
    from ipc.bench import split_session

    config = load_config(args.config)
    split = request.for_daemons(
        k=settings.k,
        temperature=settings.temperature,
        seed=settings.seed,
        prompt=prompts[0].text,
        max_new_tokens=settings.max_new_tokens,
        baseline=True,
        prompts=tuple(p.text for p in prompts),
        warmup_tokens=settings.warmup_tokens,
    )

    def show(event: Any) -> None:
        if isinstance(event, events.StatusEvent) and event.state in ("loading", "ready"):
            progress.phase(f"{name}: {event.role} {event.state}")
        elif isinstance(event, events.PromptEvent):
            progress.phase(f"{name}: prompts")

    inventory = discover(args.simulate)
    try:
        return split_session(
            split,
            inventory=inventory,
            backend_python=config.backend_python,
            data_dir=data_dir(),
            config_path=config.path,
            on_prompt=lambda i, _: progress.advance(),
            on_event=show,
        )
    finally:
        inventory.close()


def _peer(
    request: run_command.RunRequest,
    loaded: tuple[Any, Any] | None,
    ours: dict[str, Any],
    prompts: list[BenchPrompt],
    settings: Settings,
    progress: BenchProgress,
    name: str,
) -> dict[str, Any]:
    """transformers' assisted generation on the same pair and devices; errors kept in `error`."""
    from ipc.bench import compare_peer, hf_assisted_session

    own = loaded is None
    try:
        if own:  # a split placement's models were in the daemons, now gone
            progress.phase(f"{name}: hf loading models")
            loaded = _load(request)
        progress.phase(f"{name}: hf assisted")
        peer = hf_assisted_session(
            *loaded, prompts, settings, on_prompt=lambda i, _: progress.advance()
        )
        return {**compare_peer(peer, ours, settings.temperature), "error": None}
    except (RuntimeError, OSError, ValueError, TypeError, NotImplementedError) as exc:
        text = _one_line(exc)
        print(f"specdeck: hf peer on {name} failed: {text}", file=sys.stderr)
        progress.advance(len(prompts))
        return {"error": text, "decode_tokens_per_s": None, "mean_acceptance_length": None}
    finally:
        if own:
            loaded = None
            _release_memory()


def _release_memory() -> None:
    """Give the memory of models no longer referenced back, so the next placement has it."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "k": settings.k,
        "temperature": settings.temperature,
        "seed": settings.seed,
        "max_new_tokens": settings.max_new_tokens,
        "baseline": True,
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rich table of results on stdout."""
    from rich.console import Console
    from rich.table import Table

    from ipc.bench import COLUMNS, cell

    table = Table(title="specdeck bench")
    for key, title in COLUMNS:
        right = key in (
            "mean_al",
            "acceptance",
            "tokens_per_s",
            "target_only_tokens_per_s",
            "speedup",
        )
        table.add_column(title, justify="right" if right else "left")
    if any(r.get("error") for r in rows):
        table.add_column("note")
    for row in rows:
        values = [cell(key, row.get(key)) for key, _ in COLUMNS]
        if any(r.get("error") for r in rows):
            values.append(f"failed: {row['error']}" if row.get("error") else "")
        table.add_row(*values)
    Console(width=max(160, Console().width)).print(table)


class BenchProgress:
    """A rich progress bar on stderr over every prompt of every placement; off without a tty."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> BenchProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("prompts"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, text: str) -> None:
        """Say what the bench is doing now."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self, count: int = 1) -> None:
        """Prompts done."""
        if self._progress is not None:
            self._progress.advance(self._task, count)
