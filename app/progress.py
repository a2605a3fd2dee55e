"""A workload's progress in words: the command line's bar and the dashboard's gauge say the
same (no Textual, no rich here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipc.events import PromptEvent
    from ipc.run_spec import Workload


def time_text(seconds: float | None) -> str:
    """`1:02:03` or `4:05`; `-` while unknown."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class WorkloadProgress:
    """Where a workload stands: prompts done, of how many (None: until the time is up), the
    fraction done and the seconds left, as the runner reckons them (`PromptEvent`)."""

    done: int = 0
    total: int | None = None
    fraction: float = 0.0
    eta_s: float | None = None

    @classmethod
    def starting(cls, workload: Workload) -> WorkloadProgress:
        """Before the first prompt ends: only a time bound's ETA is known."""
        return cls(0, workload.total, 0.0, workload.duration_s)

    @classmethod
    def of(cls, event: PromptEvent) -> WorkloadProgress:
        """After the prompt this event reports."""
        return cls(event.index + 1, event.total, event.fraction, event.eta_s)

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def label(self) -> str:
        """`prompt 3 of 10`: the prompt going on (the last one once all are done)."""
        current = self.done if self.finished else self.done + 1
        return f"prompt {current}" + ("" if self.total is None else f" of {self.total}")

    @property
    def detail(self) -> str:
        """`2 done, ETA 0:12`."""
        return f"{self.done} done, ETA {time_text(self.eta_s)}"

    def line(self, result: Mapping[str, Any]) -> str:
        """`prompt 3 of 10 done: 40 tokens, AL 2.31, 120.5 tok/s; ETA 0:12`, after the prompt
        whose generation document is `result`."""
        tokens = result.get("new_tokens", 0)
        figures = [f"{tokens} token{'' if tokens == 1 else 's'}"]
        if result.get("mean_acceptance_length") is not None:
            figures.append(f"AL {result['mean_acceptance_length']:.2f}")
        if result.get("decode_tokens_per_s") is not None:
            figures.append(f"{result['decode_tokens_per_s']:.1f} tok/s")
        of = "" if self.total is None else f" of {self.total}"
        return f"prompt {self.done}{of} done: {', '.join(figures)}; ETA {time_text(self.eta_s)}"
