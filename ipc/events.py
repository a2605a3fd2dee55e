"""What a run tells its watcher while it goes on, and what the watcher may ask of the run
(no torch here; the dashboard imports it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.metrics import StepRecord

STATES = ("starting", "loading", "ready", "prefill", "decode", "done", "stopped", "failed")


@dataclass(frozen=True)
class StatusEvent:
    """A role's state changed (`role` is "draft", "target" or "run")."""

    role: str
    state: str
    text: str = ""


@dataclass(frozen=True)
class StepEvent:
    """One speculative step and the running figures after it."""

    step: StepRecord
    token_ids: tuple[int, ...]
    text: str
    mean_acceptance_length: float | None
    acceptance_rate: float | None
    per_position_acceptance: tuple[float, ...]
    decode_tokens_per_s: float | None
    new_tokens: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """Tokens of the target-only baseline (phase "baseline"), for progress display."""

    phase: str
    token_ids: tuple[int, ...]
    text: str
    new_tokens: int
    decode_tokens_per_s: float | None


@dataclass(frozen=True)
class LogEvent:
    """A line a daemon or the supervisor wants the user to see."""

    level: str
    text: str
    role: str = ""


@dataclass(frozen=True)
class ErrorEvent:
    """A role failed; `exit_status` is the daemon's exit status when it died, else None."""

    role: str
    text: str
    exit_status: int | None = None


@dataclass(frozen=True)
class DoneEvent:
    """The run finished; `result` is the `specdeck run --json` document."""

    result: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptEvent:
    """One prompt of a multi-prompt session finished; `result` is its generation document.

    `index` counts from 0 over the whole run (every round); `total` is None when only a time
    bound ends the run. `fraction` (0..1) and `eta_s` (None while unknown) are the runner's one
    reckoning of the workload's progress (`ipc.run_spec.Workload.progress`)."""

    index: int
    total: int | None
    result: dict = field(default_factory=dict)
    elapsed_s: float = 0.0  # since the first prompt started
    fraction: float = 0.0
    eta_s: float | None = None


@dataclass(frozen=True)
class DaemonEvent:
    """A daemon process started."""

    role: str
    pid: int
    device_ids: tuple[str, ...]


RunEvent = (
    StatusEvent
    | StepEvent
    | TokenEvent
    | LogEvent
    | ErrorEvent
    | DoneEvent
    | DaemonEvent
    | PromptEvent
)


@runtime_checkable
class RunControl(Protocol):
    """A run going on in the background, as its watcher holds it (`ipc.runner.RunHandle`)."""

    run_id: str
    record_dir: Path  # the run record's folder
    error: ErrorEvent | None  # after a failure

    @property
    def pids(self) -> dict[str, int]:
        """role -> pid of each daemon started so far."""
        ...

    @property
    def finished(self) -> bool: ...

    def stop(self) -> None:
        """Ask the run to stop; daemons are shut down and the record is kept."""
        ...

    def wait(self, timeout: float | None = None) -> dict | None:
        """The run's document, or None if it failed, stopped without one, or is still going."""
        ...

    def wait_to_end(self) -> dict | None:
        """`wait()` for the run's end; an interrupt stops the run first."""
        ...
