"""The one definition of speculative decoding metrics (see DESIGN.md, Metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepRecord:
    """One step: a draft proposal of `drafted` tokens plus one target verification."""

    index: int
    drafted: int  # draft tokens proposed this step (k, or fewer near max_new_tokens)
    accepted: int  # leading draft tokens the target accepted
    committed: int  # tokens appended to the output: accepted + the target's bonus/correction
    draft_s: float  # time spent proposing
    verify_s: float  # time of the target forward and acceptance
    transport_s: float = 0.0  # time on the wire (remote drafter only)
    k: int = 0  # the k asked for this step (differs from drafted when clipped)


@dataclass
class AcceptanceStats:
    """Running totals over steps; every summary, pane and record reads these."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    committed: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    transport_s: float = 0.0
    # position i (1-based) -> [steps whose first i drafts were accepted, steps that drafted >= i]
    _positions: list[list[int]] = field(default_factory=list)

    def add(self, step: StepRecord) -> None:
        self.steps += 1
        self.drafted += step.drafted
        self.accepted += step.accepted
        self.committed += step.committed
        self.draft_s += step.draft_s
        self.verify_s += step.verify_s
        self.transport_s += step.transport_s
        while len(self._positions) < step.drafted:
            self._positions.append([0, 0])
        for i in range(step.drafted):
            self._positions[i][1] += 1
            if step.accepted > i:
                self._positions[i][0] += 1

    @property
    def mean_acceptance_length(self) -> float | None:
        return self.committed / self.steps if self.steps else None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def totals(self) -> dict[str, int | float | None]:
        """The counts and the two ratios, as run documents and bench rows carry them."""
        return {
            "steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "committed": self.committed,
            "mean_acceptance_length": self.mean_acceptance_length,
            "acceptance_rate": self.acceptance_rate,
        }

    @property
    def per_position_acceptance(self) -> list[float]:
        return [hit / seen for hit, seen in self._positions if seen]


def decode_tokens_per_s(new_tokens: int, decode_s: float) -> float | None:
    """New tokens after the first, over decode wall time (prefill excluded)."""
    if new_tokens < 2 or decode_s <= 0:
        return None
    return (new_tokens - 1) / decode_s


def speedup(spec_tokens_per_s: float | None, baseline_tokens_per_s: float | None) -> float | None:
    if not spec_tokens_per_s or not baseline_tokens_per_s:
        return None
    return spec_tokens_per_s / baseline_tokens_per_s
