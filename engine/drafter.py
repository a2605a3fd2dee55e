"""The drafter interface: the speculative loop holds one and never asks which kind it is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Proposal:
    """Up to k drafted tokens; under sampling, q(token) for each (empty under greedy)."""

    tokens: list[int]
    token_probs: list[float]  # q(x_i) of each drafted token x_i; [] when greedy


class Drafter(ABC):
    """Proposes draft tokens and keeps its own KV cache in step with the committed context."""

    @abstractmethod
    def begin(self, prompt_ids: list[int], temperature: float, seed: int | None) -> None:
        """Reset and prefill on the prompt; later proposals continue from it."""

    @abstractmethod
    def propose(self, k: int) -> Proposal:
        """Draft up to k tokens after the committed context."""

    @abstractmethod
    def q_row(self, position: int) -> np.ndarray:
        """Full draft distribution (float32, vocab-sized) at drafted position `position`
        (0-based) of the last proposal; asked only where the target rejected that token."""

    @abstractmethod
    def commit(self, accepted: int, next_token: int) -> None:
        """Keep the first `accepted` drafted tokens, drop the rest, then append `next_token`."""

    def prepare(
        self,
        context_tokens: int,
        ks: Sequence[int],
        temperature: float,
        on_progress: Callable[[str], None] | None = None,
    ) -> float:
        """Get ready for a run of up to `context_tokens` tokens drafting k in `ks` (capture
        graphs, size caches); seconds spent capturing. Most drafters need nothing."""
        return 0.0

    def close(self) -> None:
        """Release the model and anything the drafter holds."""
