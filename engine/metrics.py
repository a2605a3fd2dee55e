"""The one definition of speculative decoding metrics (see DESIGN.md, Metrics)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


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


def pooled_figures(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Figures over several prompts' generation documents (`PooledFigures`, added in turn)."""
    pool = PooledFigures()
    for document in documents:
        pool.add(document)
    return pool.figures()


@dataclass
class DecodeTotals:
    """new tokens, decode tokens (new tokens after each first) and decode time, summed."""

    new_tokens: int = 0
    decode_tokens: int = 0
    decode_s: float = 0.0

    def add(self, doc: Mapping[str, Any]) -> None:
        new = _new_tokens(doc)
        self.new_tokens += new
        self.decode_tokens += max(new - 1, 0)
        self.decode_s += _decode_s(doc)

    def figures(self) -> dict[str, Any]:
        tokens, seconds = self.decode_tokens, self.decode_s
        return {
            "new_tokens": self.new_tokens,
            "decode_tokens": tokens,
            "decode_s": seconds,
            "decode_tokens_per_s": tokens / seconds if tokens and seconds > 0 else None,
        }


@dataclass
class PooledFigures:
    """Running totals over the prompts of a session, numbers only (a run of hours holds no
    list of its prompts): AL = committed / steps over all prompts, decode tokens/s = decode
    tokens / decode time; the target-only figures only when every prompt has them."""

    prompts: int = 0
    prompt_tokens: int = 0
    stats: AcceptanceStats = field(default_factory=AcceptanceStats)
    spec: DecodeTotals = field(default_factory=DecodeTotals)
    base: DecodeTotals = field(default_factory=DecodeTotals)
    with_baseline: int = 0  # prompts that also decoded target-only
    greedy: bool = True  # every prompt at temperature 0
    identical: bool = True  # every greedy output equal to its target-only output
    prefill_s: float = 0.0
    wall_s: float = 0.0

    def add(self, doc: Mapping[str, Any]) -> None:
        """One more prompt's generation document."""
        self.prompts += 1
        self.prompt_tokens += doc.get("prompt_tokens", 0)
        self.stats.steps += doc["steps"]
        self.stats.drafted += doc.get("drafted", 0)
        self.stats.accepted += doc.get("accepted", 0)
        self.stats.committed += doc.get("committed", 0)
        self.spec.add(doc)
        self.prefill_s += doc.get("prefill_s", 0.0)
        self.wall_s += doc.get("wall_s", 0.0)
        self.greedy = self.greedy and doc.get("temperature", 0.0) == 0.0
        base = doc.get("baseline")
        if base:
            self.with_baseline += 1
            self.base.add(base)
            same = list(doc["output_token_ids"]) == list(base["output_token_ids"])
            self.identical = self.identical and same

    def figures(self) -> dict[str, Any]:
        """The pooled figures, as session documents and bench rows carry them."""
        spec = self.spec.figures()
        complete = self.prompts > 0 and self.with_baseline == self.prompts
        base = self.base.figures() if complete else None
        return {
            "prompt_count": self.prompts,
            "prompt_tokens": self.prompt_tokens,
            **spec,
            **self.stats.totals(),
            "prefill_s": self.prefill_s,
            "wall_s": self.wall_s,
            "baseline": base,
            "speedup": speedup(spec["decode_tokens_per_s"], base and base["decode_tokens_per_s"]),
            "identical_to_baseline": self.identical if base is not None and self.greedy else None,
        }


def _new_tokens(doc: Mapping[str, Any]) -> int:
    return int(doc.get("new_tokens") or len(doc.get("output_token_ids") or ()))


def _decode_s(doc: Mapping[str, Any]) -> float:
    """A document's decode time; from its tokens/s where an older daemon left it out."""
    if doc.get("decode_s") is not None:
        return float(doc["decode_s"])
    tps = doc.get("decode_tokens_per_s")
    return (_new_tokens(doc) - 1) / tps if tps else 0.0


def compare_peer(peer: dict[str, Any], ours: dict[str, Any], temperature: float) -> dict[str, Any]:
    """The peer's figures beside ours: speedup over our target-only, greedy match, our tok/s."""
    base = ours.get("baseline") or {}
    identical = None
    if temperature == 0 and len(peer["prompts"]) == len(ours["prompts"]):
        identical = all(
            list(p["output_token_ids"])
            == list((o.get("baseline") or {}).get("output_token_ids", []))
            for p, o in zip(peer["prompts"], ours["prompts"], strict=True)
        )
    return {
        **peer,
        "speedup": speedup(peer["decode_tokens_per_s"], base.get("decode_tokens_per_s")),
        "identical_to_baseline": identical,
        "specdeck_decode_tokens_per_s": ours.get("decode_tokens_per_s"),
    }
