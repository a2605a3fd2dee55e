"""One run spec, its bounds and defaults, and the one check every entry point calls.

`RunSpec` is what a user asked for (the command line, the dashboard, a bench placement);
`check_run` resolves and checks it once against the devices and the model catalog and gives
a `CheckedRun`, the frozen value `ipc.runner.start_run` executes. A refusal is one
`EngineInputError`, `PlacementError` or `ConfigError`-like sentence, the same everywhere.
Plain Python: no torch, no terminal.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import Device
from backends.discovery import DeviceInventory as Inventory
from backends.placement import (
    Placement,
    PlacementError,
    check_placement,
    default_device,
    parse_device_ids,
)
from engine.errors import EngineInputError
from ipc.launch import PlacedRole
from ipc.transport import TRANSPORTS

if TYPE_CHECKING:
    from engine.catalog import ModelInfo

DEFAULT_PROMPT = "def fibonacci(n):"
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_K = 6
DEFAULT_TEMPERATURE = 0.0
DEFAULT_SEED = 0
WARMUP_TOKENS = 4  # one short generation first, unrecorded: first calls pay setup

K_LIMIT = 64  # the draft daemon refuses more (ipc.draft_daemon.MAX_K)
AUTO_K_MOST = 16  # the most tokens k=auto drafts in a step (engine.speculative.K_MAX)
MAX_NEW_TOKENS_LIMIT = 1_000_000  # beyond any context a model has today
SEED_LIMIT = 2**64 - 1  # torch generators (and ipc.codec.MAX_SEED) take any seed up to here
PROMPT_FILE_LIMIT = 4 * 2**20  # bytes; about a million tokens, more than any context
REPEAT_LIMIT = 1_000_000  # rounds of a prompt list
DURATION_LIMIT_S = 7 * 24 * 3600.0  # a week: a time bound beyond it is a typo
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MODES = ("inprocess", "split")
INTERPRETER_CHECK_S = 60.0  # a cold interpreter on a slow disk imports numpy and zmq slowly


class BadSetup(EngineInputError):
    """A configured interpreter that cannot start a daemon; one line naming the config key."""


@dataclass(frozen=True)
class RunSpec:
    """What to run: models, placement, generation options, mode (None: chosen as placed)."""

    target_model: str | None = None  # a folder or a catalog name; None: the demo pair
    draft_model: str | None = None
    target: tuple[str, ...] = ()  # device ids of the target; (): the first GPU, else the CPU
    draft: str | None = None  # None: the target's first device
    mode: str | None = None
    k: int | str = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = DEFAULT_SEED
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)  # several: one session, pooled figures
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    baseline: bool = False
    trust_remote_code: bool = False  # for both models (the config can trust one by name)
    transport: str = "ipc"  # or "tcp": loopback tcp with CURVE (ipc.transport), tests and benches
    warmup_tokens: int = WARMUP_TOKENS
    decoder: str = "speculative"  # or "hf-assisted": transformers' own, the bench's peer
    pooled: bool = False  # a bench session: the document pools its prompts, even just one
    # the workload: which prompts, how many times, for how long (bounds in check_workload)
    prompt_ids: tuple[str, ...] = ()  # each prompt's name in its source (a suite id, a line)
    prompt_source: str = ""  # where the prompts came from: a suite's name or a file; "": given
    n: int | None = None  # the first n of the prompts; None: all of them
    repeat: int | None = None  # rounds of the prompts; None: one, or until the duration is up
    duration: str | float | None = None  # a time bound as typed ("90s", "30m", "2h") or seconds


@dataclass(frozen=True)
class Workload:
    """The prompts a run decodes in turn, in the same daemons: rounds of the list, a time
    bound, or both. Plain arithmetic over counts and seconds: the runner, the command line's
    progress bar and the dashboard's gauge all read it."""

    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    ids: tuple[str, ...] = ()  # each prompt's name in its source, where it has one
    source: str = ""  # a suite's name or a prompts file; "" for the prompt given
    repeat: int | None = None  # rounds of the list; None: one, or unbounded under a duration
    duration_s: float | None = None  # no prompt starts after this long (the one going finishes)

    @property
    def several(self) -> bool:
        """Whether more than one prompt may run (a session with a row per prompt)."""
        return len(self.prompts) > 1 or (self.repeat or 1) > 1 or self.duration_s is not None

    @property
    def total(self) -> int | None:
        """The prompts the run decodes; None when only the time bound ends it."""
        if self.repeat is not None:
            return len(self.prompts) * self.repeat
        return None if self.duration_s is not None else len(self.prompts)

    def prompt_at(self, done: int) -> tuple[int, str]:
        """(index in the list, text) of the prompt that follows `done` finished ones."""
        index = done % len(self.prompts)
        return index, self.prompts[index]

    def id_of(self, index: int) -> str | None:
        return self.ids[index] if index < len(self.ids) else None

    def more(self, done: int, elapsed_s: float) -> bool:
        """Whether another prompt starts after `done` finished ones, `elapsed_s` in."""
        total = self.total
        if total is not None and done >= total:
            return False
        return self.duration_s is None or elapsed_s < self.duration_s

    def progress(self, done: int, elapsed_s: float) -> tuple[float, float | None]:
        """(fraction done, seconds left or None while unknown): by count, by time, or the
        nearer of the two bounds."""
        fractions, left = [], []
        total = self.total
        if total is not None:
            fractions.append(min(done / total, 1.0))
            if done:
                left.append(max(elapsed_s / done * (total - done), 0.0))
        if self.duration_s is not None:
            fractions.append(min(elapsed_s / self.duration_s, 1.0))
            left.append(max(self.duration_s - elapsed_s, 0.0))
        return max(fractions), (min(left) if left else None)


@dataclass(frozen=True)
class CheckedRun:
    """A run spec resolved and checked: what `ipc.runner.start_run` executes."""

    spec: RunSpec
    target: ModelInfo
    draft: ModelInfo
    placement: Placement
    devices: Mapping[str, Device]  # the placement's devices by id
    mode: str
    k: int | str  # the spec's k, parsed: a whole number or "auto"
    trust_target_code: bool
    trust_draft_code: bool
    backend_python: Mapping[str, str] = field(default_factory=dict)  # backend -> interpreter
    config_path: str = ""
    workload: Workload = field(default_factory=Workload)  # the prompts, cut to n, and bounds

    @property
    def temperature(self) -> float:
        return self.spec.temperature

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.workload.prompts

    @property
    def session(self) -> bool:
        """Whether this is a multi-prompt session (its document pools the prompts)."""
        return self.spec.pooled or self.workload.several

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens

    @property
    def baseline(self) -> bool:
        return self.spec.baseline

    @property
    def warmup_tokens(self) -> int:
        return self.spec.warmup_tokens

    @property
    def decoder(self) -> str:
        return self.spec.decoder

    @property
    def transport(self) -> str:
        """How the daemons' sockets reach each other: "ipc" or "tcp" (CURVE)."""
        return self.spec.transport

    @property
    def prompt_list(self) -> tuple[str, ...]:
        """The prompts decoded in turn."""
        return self.workload.prompts

    @property
    def prompt(self) -> str:
        return self.workload.prompts[0]

    @property
    def target_model(self) -> str:
        """The target's folder, resolved (daemons run in the run dir)."""
        return str(Path(self.target.path).resolve())

    @property
    def draft_model(self) -> str:
        return str(Path(self.draft.path).resolve())

    @property
    def target_name(self) -> str:
        """What records call the target: its catalog name, else its folder as given."""
        return self.target.name

    @property
    def draft_name(self) -> str:
        return self.draft.name

    @property
    def trust_remote_code(self) -> bool:
        """Whether the target model's own code may run."""
        return self.trust_target_code

    @property
    def draft_trust(self) -> bool:
        """Whether the draft model's own code may run."""
        return self.trust_draft_code

    def placed(self, role: str) -> PlacedRole:
        """The target or the draft on its Devices: what its daemon's launch is built from.

        In split mode with both daemons on the CPU (simulated cards run there too), each gets
        half its cores (`PlacedRole.cpu_threads`): they take turns, and a whole-machine pool of
        each fights the other's.
        """
        target = role == "target"
        ids = self.placement.target if target else (self.placement.draft,)
        devices = tuple(self.devices_of(ids))
        on_cpu = [  # a simulated card's work runs on the host's CPU too
            d
            for d in (*self.devices_of(self.placement.target), self.devices[self.placement.draft])
            if d.backend == "cpu" or d.simulated
        ]
        here = devices[0].backend == "cpu" or devices[0].simulated
        sharing = self.mode == "split" and len(on_cpu) > 1 and here
        return PlacedRole(
            role,
            self.target_model if target else self.draft_model,
            devices,
            self.trust_remote_code if target else self.draft_trust,
            cpu_threads=max(1, (os.cpu_count() or 2) // 2) if sharing else None,
        )

    def devices_of(self, ids: Iterable[str]) -> list[Device]:
        """The Devices of these ids, in order."""
        return [self.devices[i] for i in ids]

    @property
    def simulated_devices(self) -> list[str]:
        return sorted(i for i, d in self.devices.items() if d.simulated)


# -- the bounds of each option, checked here once ------------------------------------------


def parse_k(text: str | int, option: str = "--k") -> int | str:
    """`auto` or a whole number of draft tokens in [1, K_LIMIT]."""
    value = str(text).strip().lower()
    if value == "auto":
        return "auto"
    k = int(value) if value.isdigit() else None
    if k is None or not 1 <= k <= K_LIMIT:
        raise EngineInputError(
            f"{option} must be a whole number from 1 to {K_LIMIT} or 'auto', not {text!r}"
        )
    return k


def most_drafted(k: int | str) -> int:
    """The most tokens one step drafts with this k (`auto` grows up to AUTO_K_MOST)."""
    return AUTO_K_MOST if k == "auto" else int(k)


OPTION_FLAGS = {  # what the command line calls each option, in the check's sentences
    "k": "--k",
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "seed": "--seed",
    "n": "--n",
    "repeat": "--repeat",
    "duration": "--duration",
}


def check_options(spec: RunSpec, names: Mapping[str, str] | None = None) -> int | str:
    """Raise EngineInputError for the first generation option out of its bounds; the k.

    `names` maps an option to what the user calls it (`--max-new-tokens`, `max new tokens`).
    """
    name = {**OPTION_FLAGS, **(names or {})}
    k = parse_k(spec.k, name["k"])
    if not 1 <= spec.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise EngineInputError(
            f"{name['max_new_tokens']} must be from 1 to {MAX_NEW_TOKENS_LIMIT}, "
            f"not {spec.max_new_tokens}"
        )
    if not math.isfinite(spec.temperature) or spec.temperature < 0:
        raise EngineInputError(
            f"{name['temperature']} must be 0 (greedy) or more, not {spec.temperature}"
        )
    if not 0 <= spec.seed <= SEED_LIMIT:
        raise EngineInputError(f"{name['seed']} must be from 0 to 2**64-1, not {spec.seed}")
    if spec.mode is not None and spec.mode not in MODES:
        raise PlacementError(f"unknown mode {spec.mode!r} (inprocess or split)")
    if not spec.prompts or not all(spec.prompts):
        raise EngineInputError("the prompt is empty")
    if spec.decoder not in ("speculative", "hf-assisted"):
        raise EngineInputError(f"unknown decoder {spec.decoder!r} (speculative or hf-assisted)")
    if spec.transport not in TRANSPORTS:
        raise EngineInputError(f"unknown transport {spec.transport!r} (ipc or tcp)")
    if not 0 <= spec.warmup_tokens <= spec.max_new_tokens + WARMUP_TOKENS:
        raise EngineInputError(f"warm-up of {spec.warmup_tokens} tokens is out of bounds")
    return k


def parse_duration(text: str | float, option: str = "--duration") -> float:
    """Seconds from `90s`, `30m`, `2h`, `1h30m` or `1.5d` (or a number of seconds), within
    (0, DURATION_LIMIT_S]; one line naming the option otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", value)
        if not value or "".join(n + u for n, u in parts) != value:
            raise EngineInputError(
                f"{option} must be a time such as 90s, 30m, 2h or 1h30m, not {str(text)!r}"
            )
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and 0 < seconds <= DURATION_LIMIT_S):
        raise EngineInputError(
            f"{option} must be more than 0 and at most {DURATION_LIMIT_S / 86400:g} days, "
            f"not {text!r}"
        )
    return seconds


def check_workload(spec: RunSpec, names: Mapping[str, str] | None = None) -> Workload:
    """The spec's prompts, cut to n, with their rounds and time bound; EngineInputError for
    the first bound broken (one line naming the option as the user calls it)."""
    name = {**OPTION_FLAGS, **(names or {})}
    prompts, source = spec.prompts, spec.prompt_source or "the prompt list"
    if spec.n is not None and spec.n < 1:
        raise EngineInputError(f"{name['n']} must be at least 1, not {spec.n}")
    if spec.n is not None and spec.n > len(prompts):
        raise EngineInputError(f"{name['n']} {spec.n}: {source} has {len(prompts)} prompts")
    if spec.repeat is not None and not 1 <= spec.repeat <= REPEAT_LIMIT:
        raise EngineInputError(
            f"{name['repeat']} must be from 1 to {REPEAT_LIMIT}, not {spec.repeat}"
        )
    count = len(prompts) if spec.n is None else spec.n
    return Workload(
        prompts=tuple(prompts[:count]),
        ids=tuple(spec.prompt_ids[:count]),
        source=spec.prompt_source,
        repeat=spec.repeat,
        duration_s=None
        if spec.duration is None
        else parse_duration(spec.duration, name["duration"]),
    )


def read_prompt_file(path: str, option: str = "--prompt-file") -> str:
    """A prompt file's text, up to PROMPT_FILE_LIMIT bytes; a larger one is refused."""
    try:
        with Path(path).expanduser().open("rb") as fh:
            data = fh.read(PROMPT_FILE_LIMIT + 1)  # /dev/zero never ends
        if len(data) > PROMPT_FILE_LIMIT:
            raise EngineInputError(
                f"{option} {path} is larger than {PROMPT_FILE_LIMIT // 2**20} MiB, "
                "more than any model's context holds"
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineInputError(f"cannot read {option} {path}: {exc}") from None


def read_prompts_file(
    path: str, option: str = "--prompts-file"
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prompts, their ids) from a prompts file: JSON Lines, each an object with a "prompt"
    (and, if it likes, an "id"), when the file ends in .jsonl or starts with `{`; else one
    prompt a line. Blank lines are skipped; a bad line is one sentence naming it."""
    lines = read_prompt_file(path, option).splitlines()
    filled = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    jsonl = path.endswith(".jsonl") or bool(filled and filled[0][1].lstrip().startswith("{"))
    prompts, ids = [], []
    for number, line in filled:
        where = f"{option} {path} line {number}"
        if not jsonl:
            prompts.append(line)
            ids.append(f"line {number}")
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise EngineInputError(f"{where} is not JSON (JSON Lines: one object a line)") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise EngineInputError(f'{where} has no "prompt" text')
        prompts.append(prompt)
        ids.append(str(row.get("id") or f"line {number}"))
    if not prompts:
        raise EngineInputError(f"{option} {path} holds no prompts")
    return tuple(prompts), tuple(ids)


# -- the one check ---------------------------------------------------------------------------


def check_run(
    spec: RunSpec,
    inventory: Inventory,
    *,
    model_dirs: Iterable[str | os.PathLike] = (),
    trusted: Iterable[str] = (),
    backend_python: Mapping[str, str] | None = None,
    config_path: str | os.PathLike = "",
    option_names: Mapping[str, str] | None = None,
) -> CheckedRun:
    """Resolve the models, check the options, tokenizers, context, placement, memory fit and
    interpreters; the run as it will execute, or the first reason it cannot (one line)."""
    from engine.catalog import check_same_tokenizer, demo_pair, resolve_model

    k = check_options(spec, option_names)
    workload = check_workload(spec, option_names)
    if spec.target_model is None or spec.draft_model is None:
        demo_target, demo_draft = demo_pair()
    dirs = list(model_dirs)
    target = resolve_model(spec.target_model, dirs) if spec.target_model else demo_target
    draft = resolve_model(spec.draft_model, dirs) if spec.draft_model else demo_draft
    for info in (target, draft):
        if info.problem:
            raise EngineInputError(f"{info.name} cannot load: {info.problem}")
    check_same_tokenizer(target, draft)
    count = len(workload.prompts)
    for index, prompt in enumerate(workload.prompts):
        problem = context_problem(target, draft, prompt, spec.max_new_tokens, k, option_names)
        if problem:
            named = workload.id_of(index)
            which = f"prompt {index + 1} of {count}" + (f" ({named})" if named else "")
            raise EngineInputError((f"{which}: " if count > 1 else "") + problem)
    placement, devices, mode = place(spec, target, draft, inventory)
    pythons = dict(backend_python or {})
    for backend in sorted({"cpu" if d.simulated else d.backend for d in devices.values()}):
        problem = interpreter_problem(pythons.get(backend), backend, str(config_path))
        if problem:
            raise BadSetup(problem)
    trust = set(trusted)
    return CheckedRun(
        spec=spec,
        target=target,
        draft=draft,
        placement=placement,
        devices=devices,
        mode=mode,
        k=k,
        trust_target_code=spec.trust_remote_code or bool(trust & {target.name, str(target.path)}),
        trust_draft_code=spec.trust_remote_code or bool(trust & {draft.name, str(draft.path)}),
        backend_python=pythons,
        config_path=str(config_path),
        workload=workload,
    )


def context_problem(
    target: ModelInfo,
    draft: ModelInfo,
    prompt: str,
    max_new_tokens: int,
    k: int | str,
    option_names: Mapping[str, str] | None = None,
) -> str | None:
    """Why prompt + max new tokens + k overflow the target's or the draft's context, or None.

    The prompt is counted with the target's tokenizer.json (the `tokenizers` library).
    """
    from engine import catalog

    option = (option_names or {}).get("max_new_tokens", "--max-new-tokens")
    prompt_tokens = catalog.count_prompt_tokens(target, prompt)
    return catalog.context_problem(
        target, draft, prompt_tokens, max_new_tokens, most_drafted(k), option
    )


def place(
    spec: RunSpec, target: ModelInfo, draft: ModelInfo, inventory: Inventory
) -> tuple[Placement, dict[str, Device], str]:
    """Check the placement against the discovered devices; (placement, its devices, mode)."""
    by_id = {d.id: d for d in inventory.devices}
    target_ids = spec.target or (default_device(inventory.devices).id,)
    placement = Placement(target=tuple(target_ids), draft=spec.draft or target_ids[0])
    mode = spec.mode or placement.mode
    if mode == "inprocess" and placement.draft not in placement.target:
        raise PlacementError(
            "in-process mode runs the draft inside the target's daemon, so on one of the "
            "target's devices; use --mode split for a draft elsewhere"
        )
    ids = {*placement.target, placement.draft}
    for device_id in sorted(i for i in ids if i not in by_id and i.startswith("sim-")):
        raise PlacementError(
            f"no device {device_id!r} (known: {', '.join(by_id)}); simulated devices come from "
            f"--simulate, e.g. --simulate {device_id.removeprefix('sim-').split(':')[0]}:2"
        )
    check_placement(
        placement,
        by_id,
        mode=mode,
        target_bytes=target.weight_bytes_on([by_id.get(i) for i in placement.target]),
        draft_bytes=draft.weight_bytes_on([by_id.get(placement.draft)], draft=True),
        free_bytes={i: _free_bytes(inventory, by_id[i]) for i in ids if i in by_id},
    )
    return placement, {i: by_id[i] for i in ids}, mode


def parse_placement_ids(
    target: str | None, draft: str | None
) -> tuple[tuple[str, ...], str | None]:
    """`--target cuda:0,cuda:1 --draft cpu` as (target ids, draft id); one line if malformed."""
    target_ids = parse_device_ids(target) if target else ()
    draft_ids = parse_device_ids(draft) if draft else ()
    if len(draft_ids) > 1:
        raise PlacementError(f"the draft goes on one device, not {len(draft_ids)} ({draft})")
    return target_ids, (draft_ids[0] if draft_ids else None)


def _free_bytes(inventory: Inventory, device: Device) -> int | None:
    """Free memory from one telemetry reading; None when not reported."""
    try:
        sample = inventory.sample(device)
    except Exception:  # telemetry is advisory here: no reading means the fit is not judged
        return None
    if sample.memory_total_bytes is None or sample.memory_used_bytes is None:
        return None
    return sample.memory_total_bytes - sample.memory_used_bytes


def interpreter_problem(python: str | None, backend: str, config_path: str) -> str | None:
    """Why the interpreter `[backends.<backend>] python` names cannot start a daemon, or None
    (None too when the config names none: the daemons then run on specdeck's own Python).

    Checked before a run starts: that the file exists, may be executed, and can import what a
    daemon needs before torch (specdeck's own modules, ZeroMQ, msgpack, numpy).
    """
    if python is None:
        return None
    where = (
        f"config file {config_path or 'specdeck.toml'}: [backends.{backend}] python = {python!r}"
    )
    path = Path(python).expanduser()
    if not path.exists():
        return f"{where} does not exist"
    if path.is_dir() or not os.access(path, os.X_OK):
        return f"{where} is not an executable file"
    root = Path(__file__).resolve().parent.parent
    paths = [str(root), os.environ.get("PYTHONPATH", "")]  # as the supervisor starts daemons
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    try:
        done = subprocess.run(
            [str(path), "-c", "import app.cli, ipc.daemon_runtime"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=INTERPRETER_CHECK_S,
        )
    except OSError as exc:
        return f"{where} cannot be started: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return f"{where} did not start within {INTERPRETER_CHECK_S:g} s"
    if done.returncode != 0:
        said = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        last = f": {said[-1]}" if said else ""
        return f"{where} cannot run a specdeck daemon (exit status {done.returncode}{last})"
    return None
