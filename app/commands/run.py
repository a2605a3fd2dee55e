"""`specdeck run`: one speculative decoding run, headless, with a summary or one JSON document.

Importing this module loads neither torch nor transformers; the in-process runner imports
the engine when it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.run_options import (
    DEFAULT_PROMPT,
    K_LIMIT,
    PROMPT_FILE_LIMIT,
    check_max_new_tokens,
    check_seed,
    run_context_problem,
)
from backends.base import Device
from backends.placement import Placement, PlacementError, check_placement, default_device
from backends.placement import parse_device_ids as parse_ids
from engine.errors import EngineInputError
from ipc.records import RecordError

BAD_INPUT_STATUS = (
    2  # a daemon that exits 2 could not start on bad input (a model that cannot load)
)

if TYPE_CHECKING:
    from engine.catalog import ModelInfo
    from engine.metrics import StepRecord
    from engine.speculative import GenerationResult


@dataclass(frozen=True)
class RunRequest:
    """A validated run: models, placement and generation options."""

    target: ModelInfo
    draft: ModelInfo
    placement: Placement
    devices: dict[str, Device]  # the placement's devices by id
    mode: str
    k: int | str
    temperature: float
    seed: int
    prompt: str
    max_new_tokens: int
    baseline: bool
    trust_target_code: bool
    trust_draft_code: bool

    def for_daemons(self, **overrides: Any) -> Any:
        """This request as `ipc.runner.RunRequest` (split mode), with fields overridden."""
        from ipc.runner import RunRequest as DaemonRequest

        fields = {
            "target_model": str(self.target.path),
            "draft_model": str(self.draft.path),
            "placement": self.placement,
            "mode": "split",
            "k": self.k,
            "temperature": self.temperature,
            "seed": self.seed,
            "prompt": self.prompt,
            "max_new_tokens": self.max_new_tokens,
            "baseline": self.baseline,
            "trust_remote_code": self.trust_target_code,
            "trust_draft_remote_code": self.trust_draft_code,
            "target_name": self.target.name,
            "draft_name": self.draft.name,
        }
        return DaemonRequest(**{**fields, **overrides})

    @property
    def target_devices(self) -> list[Device]:
        """The target's devices in split order."""
        return [self.devices[i] for i in self.placement.target]

    @property
    def draft_device(self) -> Device:
        """The draft's device."""
        return self.devices[self.placement.draft]


@dataclass(frozen=True)
class RunOutcome:
    """What a runner hands back, whichever mode ran."""

    prompt_tokens: int
    output_text: str
    spec: GenerationResult
    baseline: GenerationResult | None
    decode_paths: dict[str, Any] | None = None  # role -> path, reason, capture_s


def main(args: argparse.Namespace) -> int:
    # before torch is imported anywhere, so that torch's cuda:N is NVML's index N
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    request = build_request(args)
    with RunProgress(request.max_new_tokens, enabled=sys.stderr.isatty()) as progress:
        if request.mode == "split":
            result = run_split(request, progress, args)
        else:
            result = run_recorded(request, progress, args)
    if result is None:
        return 1  # the daemon's own message is already on stderr
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["output_text"])
        print()
        print(format_summary(result))
    return 0


def run_split(
    request: RunRequest, progress: RunProgress, args: argparse.Namespace
) -> dict[str, Any] | None:
    """Target and draft in their own daemons (ipc.runner); None after a failure it printed."""
    from app.config import data_dir, load_config
    from backends.discovery import discover
    from ipc import events
    from ipc import runner as ipc_runner

    config = load_config(args.config)
    split = request.for_daemons()

    def show(event: events.RunEvent) -> None:
        if isinstance(event, events.StatusEvent) and event.state == "capture":
            progress.phase(f"{event.role}: {event.text}")  # graphs: neither prefill nor decode
        elif isinstance(event, events.StatusEvent) and event.role == "target":
            if event.state == "loading":
                progress.phase("loading models")
            elif event.state == "prefill":
                progress.phase("speculative")
            elif event.state == "decode" and event.text.startswith("baseline"):
                progress.phase("target only", reset=True)
            elif event.state == "decode":
                progress.first_token(0)
        elif isinstance(event, events.StepEvent):
            progress.step(event.step, list(event.token_ids))
        elif isinstance(event, events.TokenEvent):
            progress.token(event.token_ids[0] if event.token_ids else 0)

    inventory = discover(args.simulate)
    try:
        handle = ipc_runner.start_run(
            split,
            inventory=inventory,
            backend_python=config.backend_python,
            on_event=show,
            data_dir=data_dir(),
            config_path=config.path,
        )
        result = handle.wait_to_end()
    finally:
        inventory.close()
    if result is None:
        text = handle.error.text if handle.error else "the run stopped"
        line = f"{text} (record {handle.record_dir})"
        if handle.error is not None and handle.error.exit_status == BAD_INPUT_STATUS:
            raise EngineInputError(line)  # a daemon found bad input: one line, status 2
        print(f"specdeck: {line}", file=sys.stderr)
        return None
    simulated = sorted(i for i, d in request.devices.items() if d.simulated)
    return {
        **result,
        "target_model": request.target.name,
        "draft_model": request.draft.name,
        "simulated_devices": simulated,
    }


def open_record(request: RunRequest, options: dict[str, Any]) -> Any:
    """A run record for an in-process run of this request, under the user data folder."""
    from app.config import data_dir
    from ipc.records import RunRecorder

    return RunRecorder(
        data_dir(),
        target_model=request.target.name,
        draft_model=request.draft.name,
        placement={"target": list(request.placement.target), "draft": request.placement.draft},
        mode=request.mode,
        options=options,
    )


def run_recorded(
    request: RunRequest, progress: RunProgress, args: argparse.Namespace
) -> dict[str, Any]:
    """An in-process run that writes its run record (steps, phase-tagged device samples)."""
    from backends.discovery import discover
    from backends.sampler import DeviceSampler
    from engine.metrics import AcceptanceStats

    recorder = open_record(
        request,
        {
            "k": request.k,
            "temperature": request.temperature,
            "seed": request.seed,
            "max_new_tokens": request.max_new_tokens,
            "baseline": request.baseline,
            "prompt": request.prompt,
        },
    )
    inventory = discover(args.simulate)
    sampler = DeviceSampler(inventory, interval_s=0.5)
    wanted = {*request.placement.target, request.placement.draft, "cpu"}
    unsubscribe = sampler.subscribe(lambda s: s.device_id in wanted and recorder.sample(s))
    stats = AcceptanceStats()

    class Recorded:
        """The live line, plus the record's steps and the sampler's phase."""

        def phase(self, name: str, reset: bool = False) -> None:
            progress.phase(name, reset)
            sampler.phase = "load" if name.startswith("loading") else "prefill"

        def first_token(self, token: int) -> None:
            progress.first_token(token)
            sampler.phase = "decode"

        def token(self, token: int) -> None:
            progress.token(token)

        def step(self, step: StepRecord, tokens: list[int]) -> None:
            progress.step(step, tokens)
            stats.add(step)
            recorder.step(step, stats.mean_acceptance_length)

    sampler.start()
    try:
        outcome = run_inprocess(request, Recorded())  # type: ignore[arg-type]
    except KeyboardInterrupt as interrupt:
        recorder.stopped()
        interrupt.record_dir = recorder.folder
        raise
    except BaseException as exc:
        if recorder.write_error is None:  # else the record cannot take more than it has
            with contextlib.suppress(RecordError):
                recorder.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        sampler.phase = "idle"
        unsubscribe()
        sampler.stop()
        inventory.close()
    result = finish_run(request, outcome)
    result["run_id"] = recorder.run_id
    recorder.finish(result)
    return result


def run_inprocess(request: RunRequest, progress: RunProgress) -> RunOutcome:
    """Both models in this process: load, generate, and optionally decode target-only."""
    from engine.graph_decoder import open_graph_decoder
    from engine.loading import check_torch_devices, load_model, quiet_transformers
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder, target_only

    quiet_transformers()
    target_torch = [inprocess_torch_device(d) for d in request.target_devices]
    draft_torch = inprocess_torch_device(request.draft_device)
    check_torch_devices(request.target_devices[0].backend, [*target_torch, draft_torch])
    progress.phase("loading models")
    target = load_model(request.target, target_torch, trust_remote_code=request.trust_target_code)
    draft = load_model(request.draft, [draft_torch], trust_remote_code=request.trust_draft_code)
    prompt_ids = list(target.tokenizer(request.prompt)["input_ids"])
    drafter = LocalDrafter(draft)
    graphs, target_path = open_graph_decoder(target.model)  # cuda-graph where it can
    try:
        decoder = SpeculativeDecoder(
            target, drafter, request.k, request.temperature, request.seed, graphs
        )
        progress.phase("warming up")  # and capturing: neither is decode time
        warm = decoder.generate(
            prompt_ids, min(4, request.max_new_tokens), on_capture=progress.phase
        )
        capture_s, draft_capture_s = warm.capture_s, warm.draft_capture_s
        if request.baseline:
            capture_s += target_only(
                target,
                prompt_ids,
                2,
                request.temperature,
                request.seed,
                target_decoder=graphs,
                on_capture=progress.phase,
            ).capture_s
        progress.phase("speculative", reset=True)
        spec = decoder.generate(
            prompt_ids,
            request.max_new_tokens,
            on_step=progress.step,
            on_first_token=progress.first_token,
        )
        baseline = None
        if request.baseline:
            progress.phase("target only", reset=True)
            baseline = target_only(
                target,
                prompt_ids,
                request.max_new_tokens,
                request.temperature,
                request.seed,
                on_token=progress.token,
                target_decoder=decoder.target_decoder,
            )
    finally:
        drafter.close()
    text = target.tokenizer.decode(spec.output_ids, skip_special_tokens=True)
    if decoder.fallback is not None:
        target_path = type(target_path)("transformers", decoder.fallback)
    capture_s += spec.capture_s + (baseline.capture_s if baseline is not None else 0.0)
    draft_capture_s += spec.draft_capture_s
    paths = {
        "target": {**target_path.as_dict(), "capture_s": capture_s - draft_capture_s},
        "draft": {**drafter.path.as_dict(), "capture_s": draft_capture_s},
    }
    return RunOutcome(len(prompt_ids), text, spec, baseline, paths)


def inprocess_torch_device(device: Device) -> str:
    """The torch device a discovered device is inside this process."""
    if device.simulated or device.backend == "cpu":
        return "cpu"  # simulated devices run their work on the CPU
    if device.backend == "cuda":
        from engine.loading import cuda_torch_index

        return f"cuda:{cuda_torch_index(device.index or 0, device.uuid)}"
    return f"cuda:{device.index}"  # a ROCm torch calls HIP devices cuda:N as well


def finish_run(request: RunRequest, outcome: RunOutcome) -> dict[str, Any]:
    """The finished run as `specdeck run --json` prints it (the one place a result is built)."""
    from engine.metrics import speedup

    spec, stats = outcome.spec, outcome.spec.stats
    baseline = None
    if outcome.baseline is not None:
        baseline = {
            "decode_tokens_per_s": outcome.baseline.decode_tokens_per_s,
            "output_token_ids": outcome.baseline.output_ids,
        }
    result: dict[str, Any] = {
        "target_model": request.target.name,
        "draft_model": request.draft.name,
        "placement": {"target": list(request.placement.target), "draft": request.placement.draft},
        "simulated_devices": sorted(i for i, d in request.devices.items() if d.simulated),
        "mode": request.mode,
        "k": request.k,
        "temperature": request.temperature,
        "seed": request.seed,
        "prompt_tokens": outcome.prompt_tokens,
        "new_tokens": spec.new_tokens,
        "steps": stats.steps,
        "mean_acceptance_length": stats.mean_acceptance_length,
        "acceptance_rate": stats.acceptance_rate,
        "per_position_acceptance": stats.per_position_acceptance,
        "decode_tokens_per_s": spec.decode_tokens_per_s,
        "prefill_s": spec.prefill_s,
        "wall_s": spec.wall_s,
        "k_history": spec.k_history,
        "stop_reason": spec.stop_reason,
        "output_token_ids": spec.output_ids,
        "output_text": outcome.output_text,
        "baseline": baseline,
        "speedup": speedup(
            spec.decode_tokens_per_s,
            outcome.baseline.decode_tokens_per_s if outcome.baseline else None,
        ),
        "decode_paths": outcome.decode_paths,  # per role: cuda-graph, lean or transformers
        "capture_s": sum(
            (p or {}).get("capture_s", 0.0) for p in (outcome.decode_paths or {}).values()
        ),
        # run records hook in here: write the record, then put its id in run_id
        "run_id": None,
    }
    return result


def format_summary(result: dict[str, Any]) -> str:
    """The human-readable summary printed after the text."""

    def num(value: float | None, fmt: str = "{:.2f}", unit: str = "") -> str:
        return "n/a" if value is None else fmt.format(value) + unit

    placement = result["placement"]
    simulated = set(result["simulated_devices"])
    mark = lambda i: f"{i} (simulated)" if i in simulated else i  # noqa: E731
    positions = " ".join(f"{p:.2f}" for p in result["per_position_acceptance"]) or "n/a"
    rows = [
        ("models", f"{result['target_model']} <- {result['draft_model']}"),
        (
            "placement",
            f"target {', '.join(map(mark, placement['target']))}; "
            f"draft {mark(placement['draft'])}; {result['mode']}",
        ),
        ("k", str(result["k"])),
        ("tokens", f"{result['prompt_tokens']} prompt, {result['new_tokens']} new"),
        ("steps", str(result["steps"])),
        ("mean acceptance length", num(result["mean_acceptance_length"])),
        ("acceptance rate", num(result["acceptance_rate"], "{:.1%}")),
        ("per-position acceptance", positions),
        ("decode", num(result["decode_tokens_per_s"], "{:.1f}", " tokens/s")),
        ("prefill", num(result["prefill_s"], "{:.3f}", " s")),
    ]
    paths = result.get("decode_paths") or {}
    if paths:  # which forward each role ran, and why not the fastest
        named = [
            f"{role} {p.get('path')}" + (f" ({p['reason']})" if p.get("reason") else "")
            for role, p in paths.items()
        ]
        rows.append(("decode paths", "; ".join(named)))
        rows.append(("graph capture", num(result.get("capture_s"), "{:.2f}", " s")))
    if result["baseline"] is not None:
        rows.append(
            (
                "target-only decode",
                num(result["baseline"]["decode_tokens_per_s"], "{:.1f}", " tokens/s"),
            )
        )
        rows.append(("speedup", num(result["speedup"], "{:.2f}", "x")))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def build_request(args: argparse.Namespace) -> RunRequest:
    """Validate every option, resolve the models and check the placement."""
    from app.config import ConfigError, interpreter_problem, load_config
    from engine.catalog import check_same_tokenizer, demo_pair, resolve_model

    k = parse_k(args.k)
    check_max_new_tokens(args.max_new_tokens)
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise EngineInputError(f"--temperature must be 0 (greedy) or more, not {args.temperature}")
    check_seed(args.seed)
    prompt = read_prompt(args.prompt, args.prompt_file)
    config = load_config(args.config)
    extra_dirs = [*config.model_dirs, *getattr(args, "models_dir", [])]
    if args.target_model is None or args.draft_model is None:
        demo_target, demo_draft = demo_pair()
    target = resolve_model(args.target_model, extra_dirs) if args.target_model else demo_target
    draft = resolve_model(args.draft_model, extra_dirs) if args.draft_model else demo_draft
    check_same_tokenizer(target, draft)
    problem = run_context_problem(target, draft, prompt, args.max_new_tokens, k)
    if problem:
        raise EngineInputError(problem)
    placement, devices, mode = place(args, target, draft)
    if mode == "split":  # only daemons run on the interpreters the config names
        for backend in {"cpu" if d.simulated else d.backend for d in devices.values()}:
            problem = interpreter_problem(config, backend)
            if problem:
                raise ConfigError(problem)
    trusted = set(config.trust_remote_code)
    return RunRequest(
        target=target,
        draft=draft,
        placement=placement,
        devices=devices,
        mode=mode,
        k=k,
        temperature=args.temperature,
        seed=args.seed,
        prompt=prompt,
        max_new_tokens=args.max_new_tokens,
        baseline=args.baseline,
        trust_target_code=args.trust_remote_code or _trusted(target, trusted),
        trust_draft_code=args.trust_remote_code or _trusted(draft, trusted),
    )


def parse_k(text: str | int) -> int | str:
    """`auto` or a whole number of draft tokens in [1, K_LIMIT]."""
    value = str(text).strip().lower()
    if value == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        k = None
    if k is None or not 1 <= k <= K_LIMIT:
        raise EngineInputError(
            f"--k must be a whole number from 1 to {K_LIMIT} or 'auto', not {text!r}"
        )
    return k


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt text from --prompt or --prompt-file (a short default without either).

    A file is read up to PROMPT_FILE_LIMIT bytes; a larger one is refused.
    """
    if prompt is not None and prompt_file is not None:
        raise EngineInputError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            with Path(prompt_file).expanduser().open("rb") as fh:
                data = fh.read(PROMPT_FILE_LIMIT + 1)  # /dev/zero never ends
            if len(data) > PROMPT_FILE_LIMIT:
                raise EngineInputError(
                    f"--prompt-file {prompt_file} is larger than {PROMPT_FILE_LIMIT // 2**20} MiB, "
                    "more than any model's context holds"
                )
            prompt = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EngineInputError(f"cannot read --prompt-file {prompt_file}: {exc}") from None
    if prompt is None:
        return DEFAULT_PROMPT
    if not prompt:
        raise EngineInputError("the prompt is empty")
    return prompt


def place(
    args: argparse.Namespace, target: ModelInfo, draft: ModelInfo
) -> tuple[Placement, dict[str, Device], str]:
    """Check the placement against the discovered devices; (placement, its devices, mode)."""
    from backends.discovery import discover

    inventory = discover(args.simulate)
    try:
        by_id = {d.id: d for d in inventory.devices}
        target_ids = (
            parse_ids(args.target) if args.target else (default_device(inventory.devices).id,)
        )
        draft_ids = parse_ids(args.draft) if args.draft else target_ids[:1]
        if len(draft_ids) != 1:
            raise PlacementError(
                f"the draft goes on one device, not {len(draft_ids)} ({args.draft})"
            )
        placement = Placement(target=tuple(target_ids), draft=draft_ids[0])
        mode = args.mode or placement.mode
        ids = {*placement.target, placement.draft}
        for device_id in sorted(i for i in ids if i not in by_id and i.startswith("sim-")):
            known = ", ".join(by_id)
            raise PlacementError(
                f"no device {device_id!r} (known: {known}); simulated devices come from "
                f"--simulate, e.g. --simulate {device_id.removeprefix('sim-').split(':')[0]}:2"
            )
        check_placement(
            placement,
            by_id,
            mode=mode,
            target_bytes=target.weight_bytes_on([by_id.get(i) for i in placement.target]),
            draft_bytes=draft.weight_bytes_on([by_id.get(placement.draft)]),
            free_bytes={i: _free_bytes(inventory, by_id[i]) for i in ids if i in by_id},
        )
        return placement, {i: by_id[i] for i in ids}, mode
    finally:
        inventory.close()


def _free_bytes(inventory: Any, device: Device) -> int | None:
    """Free memory from one telemetry reading; None when not reported."""
    try:
        sample = inventory.sample(device)
    except Exception:  # telemetry is advisory here: no reading means the fit is not judged
        return None
    if sample.memory_total_bytes is None or sample.memory_used_bytes is None:
        return None
    return sample.memory_total_bytes - sample.memory_used_bytes


def _trusted(info: ModelInfo, trusted: set[str]) -> bool:
    return info.name in trusted or str(info.path) in trusted


class RunProgress:
    """A live line on stderr (tokens, mean AL, tokens/s) while a run goes on; off without a tty."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._committed = 0
        self._steps = 0
        self._tokens = 0
        self._decode_s = 0.0

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description:<16}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("tokens  AL {task.fields[al]}  {task.fields[tps]} tok/s"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total, al="-", tps="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, name: str, reset: bool = False) -> None:
        """Show what the run is doing now."""
        if reset:
            self._committed = self._steps = self._tokens = 0
            self._decode_s = 0.0
        self._update(description=name, completed=self._tokens, al="-", tps="-")

    def first_token(self, token: int) -> None:
        """The token chosen at the prefill."""
        self._tokens = 1
        self._update(completed=self._tokens)

    def token(self, token: int) -> None:
        """One target-only token."""
        self._tokens += 1
        self._update(completed=self._tokens)

    def step(self, step: StepRecord, tokens: list[int]) -> None:
        """One speculative step."""
        self._steps += 1
        self._committed += step.committed
        self._tokens += len(tokens)
        self._decode_s += step.draft_s + step.verify_s + step.transport_s
        al = f"{self._committed / self._steps:.2f}"
        tps = f"{self._committed / self._decode_s:.1f}" if self._decode_s > 0 else "-"
        self._update(completed=self._tokens, al=al, tps=tps)

    def _update(self, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)
