"""The speculative decoding loop: prefill, draft, verify in one target forward, commit.

The target's KV cache holds the committed context except the last committed token, which
goes in front of the drafts in the next verification forward. The same loop with no
drafts is target-only decoding (`target_only`), so the baseline pays the same overheads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.drafter import Drafter, Proposal
from engine.errors import EngineInputError
from engine.kvcache import crop_cache
from engine.loading import LoadedModel
from engine.metrics import AcceptanceStats, StepRecord, decode_tokens_per_s
from engine.sampling import (
    TokenSampler,
    probabilities,
    stream_seed,
    verify_greedy,
    verify_sampled,
)

K_AUTO = "auto"
K_AUTO_START = 4
K_MIN, K_MAX = 1, 16
VERIFY_STREAM = 1

OnStep = Callable[[StepRecord, list[int]], None]


@dataclass(frozen=True)
class GenerationResult:
    """Tokens generated (the prompt excluded), every step, and the timings."""

    output_ids: list[int]
    steps: list[StepRecord]
    stats: AcceptanceStats
    prefill_s: float  # prompt forward(s) up to the first new token
    decode_s: float  # everything after the first new token
    wall_s: float
    k_history: list[int]
    stop_reason: str = "max_new_tokens"  # or "eos" or "stopped"

    @property
    def new_tokens(self) -> int:
        """Tokens generated, the first (from the prefill) included."""
        return len(self.output_ids)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode throughput as DESIGN.md defines it."""
        return decode_tokens_per_s(self.new_tokens, self.decode_s)


class KSchedule:
    """How many tokens to draft: a fixed k (0 for target-only), or `auto` (grow on full
    acceptance, shrink on an immediate rejection, within [K_MIN, K_MAX])."""

    def __init__(self, k: int | str) -> None:
        self.auto = k == K_AUTO
        if not self.auto and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
            raise EngineInputError(f"k must be a positive whole number or 'auto', not {k!r}")
        self.k = K_AUTO_START if self.auto else int(k)

    def update(self, drafted: int, accepted: int) -> None:
        """Adjust k after a step (auto only)."""
        if not self.auto or drafted == 0:
            return
        if accepted == drafted == self.k:
            self.k = min(self.k + 1, K_MAX)
        elif accepted == 0:
            self.k = max(self.k - 1, K_MIN)


class SpeculativeDecoder:
    """Generates with a target model verifying a drafter's proposals."""

    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter,
        k: int | str,
        temperature: float,
        seed: int | None,
    ) -> None:
        if temperature < 0:
            raise EngineInputError(f"temperature must be 0 (greedy) or more, not {temperature}")
        if k != K_AUTO and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise EngineInputError(f"k must be a positive whole number or 'auto', not {k!r}")
        self.target = target
        self.drafter = drafter
        self.k = k
        self.temperature = temperature
        self.seed = seed

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        on_step: OnStep | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_first_token: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        """Generate up to max_new_tokens after the prompt (stopping early at EOS).

        `on_first_token` gets the token chosen at the prefill; `on_step` every step after.
        """
        prompt = list(prompt_ids)
        if not prompt:
            raise EngineInputError("the prompt is empty after tokenization")
        if max_new_tokens < 1:
            raise EngineInputError(f"max new tokens must be at least 1, not {max_new_tokens}")
        target, drafter = self.target, self.drafter
        # the drafter seeds its draws from `seed`; the target's must be another stream, or
        # its uniforms would repeat the draft's and bias acceptance
        sampler = TokenSampler(self.temperature, stream_seed(self.seed, VERIFY_STREAM))
        schedule = KSchedule(self.k)
        eos = target.eos_token_ids
        with torch.inference_mode():
            start = time.perf_counter()
            logits, cache = target.forward(torch.tensor([prompt]), None, last_only=True)
            first = int(sampler.choose(logits[-1]))
            drafter.begin(prompt, self.temperature, self.seed)
            drafter.commit(0, first)
            target.synchronize()
            prefill_end = time.perf_counter()
            if on_first_token is not None:
                on_first_token(first)

            output = [first]
            cache_len = len(prompt)  # the cache lacks only `last`, the newest committed token
            last = first
            steps: list[StepRecord] = []
            stats = AcceptanceStats()
            stop_reason = "eos" if first in eos else "max_new_tokens"
            while stop_reason != "eos" and len(output) < max_new_tokens:
                if should_stop is not None and should_stop():
                    stop_reason = "stopped"
                    break
                remaining = max_new_tokens - len(output)
                asked = schedule.k
                t0 = time.perf_counter()
                proposal = drafter.propose(min(asked, remaining))
                drafts = proposal.tokens[: min(asked, remaining)]
                t1 = time.perf_counter()
                step_input = torch.tensor([[last, *drafts]])
                logits, cache = target.forward(step_input, cache)
                verdict = self._verify(logits, drafts, proposal, sampler)
                if verdict.accepted < len(drafts):
                    crop_cache(cache, cache_len + 1 + verdict.accepted)
                cache_len += 1 + verdict.accepted
                last = verdict.next_token
                target.synchronize()
                t2 = time.perf_counter()
                new = _committed([*drafts[: verdict.accepted], last], eos, remaining)
                output.extend(new)
                if new[-1] in eos:
                    stop_reason = "eos"
                finished = stop_reason == "eos" or len(output) >= max_new_tokens
                if not finished:
                    drafter.commit(verdict.accepted, last)
                t3 = time.perf_counter()
                step = StepRecord(
                    index=len(steps),
                    drafted=len(drafts),
                    accepted=min(verdict.accepted, len(new)),
                    committed=len(new),
                    draft_s=(t1 - t0) + (t3 - t2),
                    verify_s=t2 - t1,
                    k=asked,
                )
                steps.append(step)
                stats.add(step)
                schedule.update(len(drafts), verdict.accepted)
                if on_step is not None:
                    on_step(step, new)
            end = time.perf_counter()
        return GenerationResult(
            output_ids=output,
            steps=steps,
            stats=stats,
            prefill_s=prefill_end - start,
            decode_s=end - prefill_end,
            wall_s=end - start,
            k_history=[s.k for s in steps],
            stop_reason=stop_reason,
        )

    def _verify(self, logits: torch.Tensor, drafts: list[int], proposal: Proposal, sampler):
        """Accept a prefix of the drafts and choose the target's next token."""
        if sampler.greedy:
            return verify_greedy(drafts, torch.argmax(logits, dim=-1).tolist())
        probs = probabilities(logits, self.temperature)
        q_drafts = proposal.token_probs[: len(drafts)]
        return verify_sampled(probs, drafts, q_drafts, self.drafter.q_row, sampler)


class _NoDrafter(Drafter):
    """Proposes nothing: the loop then decodes one target token per step."""

    def begin(self, prompt_ids: list[int], temperature: float, seed: int | None) -> None:
        pass

    def propose(self, k: int) -> Proposal:
        return Proposal([], [])

    def q_row(self, position: int) -> np.ndarray:
        raise IndexError("no drafted tokens")

    def commit(self, accepted: int, next_token: int) -> None:
        pass


def target_only(
    target: LoadedModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    seed: int | None,
    on_token: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Plain decoding with the target alone, through the same loop (AL is 1.0)."""

    def on_step(step: StepRecord, tokens: list[int]) -> None:
        for token in tokens:
            on_token(token)  # type: ignore[misc]

    decoder = SpeculativeDecoder(target, _NoDrafter(), 1, temperature, seed)
    decoder.k = 0  # no drafts: every step is one target token
    if on_token is None:
        return decoder.generate(prompt_ids, max_new_tokens)
    return decoder.generate(prompt_ids, max_new_tokens, on_step, on_first_token=on_token)


def _committed(tokens: list[int], eos: Collection[int], room: int) -> list[int]:
    """The tokens a step appends: up to and including the first EOS, at most `room`."""
    for i, token in enumerate(tokens):
        if token in eos:
            tokens = tokens[: i + 1]
            break
    return tokens[:room]
