"""The speculative decoding loop: prefill, draft, verify in one target forward, commit.

The target's KV cache holds the committed context except the last committed token, which
goes in front of the drafts in the next verification forward. The same loop with no
drafts is target-only decoding (`target_only`), so the baseline pays the same overheads.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.drafter import Drafter, Proposal
from engine.errors import EngineInputError
from engine.graph_decoder import DEFERRED, GREEDY, SAMPLED, CaptureError, GraphDecoder
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
PIPELINE_DEPTH = 2  # device steps queued ahead of the one whose tokens the host reads

OnStep = Callable[[StepRecord, list[int]], None]
OnCapture = Callable[[str], None]


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
    capture_s: float = 0.0  # graphs captured before the prefill (not in prefill or decode)
    draft_capture_s: float = 0.0  # the drafter's part of capture_s
    fallback: str | None = None  # why the target left the graph path in this generation

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

    @property
    def ks(self) -> list[int]:
        """Every k this schedule may ask for."""
        return list(range(K_MIN, K_MAX + 1)) if self.auto else [self.k]

    def update(self, drafted: int, accepted: int) -> None:
        """Adjust k after a step (auto only)."""
        if not self.auto or drafted == 0:
            return
        if accepted == drafted == self.k:
            self.k = min(self.k + 1, K_MAX)
        elif accepted == 0:
            self.k = max(self.k - 1, K_MIN)


class SpeculativeDecoder:
    """Generates with a target model verifying a drafter's proposals.

    With a `target_decoder` (engine.graph_decoder) the target verifies through captured
    graphs and accepts on the device; a drafter on that path too (`LocalDrafter.graph`)
    makes the whole step device work, queued ahead while the host reads the last one.
    """

    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter,
        k: int | str,
        temperature: float,
        seed: int | None,
        target_decoder: GraphDecoder | None = None,
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
        self.target_decoder = target_decoder
        self.fallback: str | None = None  # why the graph path was left, if it was

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        on_step: OnStep | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_first_token: Callable[[int], None] | None = None,
        on_capture: OnCapture | None = None,
        on_prefill: Callable[[], None] | None = None,
    ) -> GenerationResult:
        """Generate up to max_new_tokens after the prompt (stopping early at EOS).

        `on_first_token` gets the token chosen at the prefill; `on_step` every step after;
        `on_capture` the progress of capturing graphs, which happens before the prefill;
        `on_prefill` is called once capturing is over, as the prefill begins.
        """
        prompt = list(prompt_ids)
        if not prompt:
            raise EngineInputError("the prompt is empty after tokenization")
        if max_new_tokens < 1:
            raise EngineInputError(f"max new tokens must be at least 1, not {max_new_tokens}")
        if self.target_decoder is not None:
            run = _GraphRun(
                self, prompt, max_new_tokens, on_step, should_stop, on_capture, on_prefill
            )
            try:
                return run.generate(on_first_token)
            except CaptureError as exc:  # raised before the prefill: nothing ran yet
                self.target_decoder, self.fallback = None, str(exc)
        target, drafter = self.target, self.drafter
        # the drafter seeds its draws from `seed`; the target's must be another stream, or
        # its uniforms would repeat the draft's and bias acceptance
        sampler = TokenSampler(self.temperature, stream_seed(self.seed, VERIFY_STREAM))
        schedule = KSchedule(self.k)
        eos = target.eos_token_ids
        draft_capture_s = 0.0
        if schedule.k > 0:  # a GPU draft beside a target off the graph path: captured now
            context = len(prompt) + max_new_tokens  # the drafter adds its own k headroom
            draft_capture_s = drafter.prepare(context, schedule.ks, self.temperature, on_capture)
        if on_prefill is not None:
            on_prefill()
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
            capture_s=draft_capture_s,
            draft_capture_s=draft_capture_s,
            fallback=self.fallback,
        )

    def _verify(self, logits: torch.Tensor, drafts: list[int], proposal: Proposal, sampler):
        """Accept a prefix of the drafts and choose the target's next token."""
        if sampler.greedy:
            return verify_greedy(drafts, torch.argmax(logits, dim=-1).tolist())
        probs = probabilities(logits, self.temperature)
        q_drafts = proposal.token_probs[: len(drafts)]
        return verify_sampled(probs, drafts, q_drafts, self.drafter.q_row, sampler)


@dataclass(frozen=True)
class _Launched:
    """A step queued on the device: its k, its clock marks, where its result lands."""

    k: int
    marks: tuple[Any, ...]
    slot: int
    done: Any  # the CUDA event after the result's copy to the host (None off CUDA)


class _HostRing:
    """Host rows (pinned on CUDA) that each queued step's result is copied into."""

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.rows = torch.zeros((rows, width), dtype=torch.long, pin_memory=self.cuda)
        self._next = 0

    def send(self, result: torch.Tensor, width: int) -> tuple[int, Any]:
        slot = self._next
        self._next = (slot + 1) % self.rows.shape[0]
        self.rows[slot, :width].copy_(result[:width], non_blocking=True)
        if not self.cuda:
            return slot, None
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return slot, done

    def receive(self, slot: int, done: Any, width: int) -> list[int]:
        if done is not None:
            done.synchronize()  # the step's one host sync
        return self.rows[slot, :width].tolist()


class _GraphRun:
    """One generation on the graph path: the target verifies (or steps) by replaying
    graphs and accepts on the device; the host reads one small result per step."""

    def __init__(
        self,
        decoder: SpeculativeDecoder,
        prompt: list[int],
        max_new_tokens: int,
        on_step: OnStep | None,
        should_stop: Callable[[], bool] | None,
        on_capture: OnCapture | None,
        on_prefill: Callable[[], None] | None = None,
    ) -> None:
        self.tg: GraphDecoder = decoder.target_decoder  # type: ignore[assignment]
        self.drafter = decoder.drafter
        self.schedule = KSchedule(decoder.k)
        self.drafting = self.schedule.k > 0
        self.temperature = decoder.temperature
        self.seed = decoder.seed
        greedy = decoder.temperature <= 0
        self._draft_graph()
        self.step_mode = GREEDY if greedy else SAMPLED
        self.eos = decoder.target.eos_token_ids
        self.prompt = prompt
        self.max_new = max_new_tokens
        self.on_step = on_step
        self.should_stop = should_stop
        self.on_capture = on_capture
        self.on_prefill = on_prefill
        ks = self.schedule.ks if self.drafting else []
        self.ks = ks
        # an extra queued step may run past the end before the host sees it
        self.tokens = len(prompt) + max_new_tokens + (PIPELINE_DEPTH + 1) * (max(ks or [0]) + 1)
        self.output: list[int] = []
        self.steps: list[StepRecord] = []
        self.stats = AcceptanceStats()
        self.stop_reason = "max_new_tokens"

    def _draft_graph(self) -> None:
        """The draft's graphs, if it has them, and how verifications choose with them."""
        self.dg: GraphDecoder | None = getattr(self.drafter, "graph", None)
        greedy = self.temperature <= 0
        self.mode = GREEDY if greedy else (SAMPLED if self.dg is not None else DEFERRED)

    def generate(self, on_first_token: Callable[[int], None] | None) -> GenerationResult:
        tg, drafter = self.tg, self.drafter
        draft_capture_s = 0.0
        if self.drafting:  # first: a draft whose capture fails drafts lean, verified deferred
            draft_capture_s = drafter.prepare(
                self.tokens, self.ks, self.temperature, self.on_capture
            )
            self._draft_graph()
        capture_s = draft_capture_s + tg.prepare(
            self.tokens,
            steps=not self.drafting,
            verify_ks=self.ks,
            mode=self.mode,
            on_progress=self.on_capture,
        )
        if self.on_prefill is not None:
            self.on_prefill()
        tg.begin(self.temperature, stream_seed(self.seed, VERIFY_STREAM))
        start = time.perf_counter()
        first = tg.start_target(self.prompt)
        if self.drafting:
            drafter.begin(self.prompt, self.temperature, self.seed)
            drafter.commit(0, first)
            if self.dg is not None:
                self.dg.synchronize()
        tg.synchronize()
        prefill_end = time.perf_counter()
        if on_first_token is not None:
            on_first_token(first)
        self.output = [first]
        if first in self.eos:
            self.stop_reason = "eos"
        elif self.max_new > 1:
            with torch.inference_mode():
                if self.dg is not None or not self.drafting:
                    self._pipelined()
                else:
                    self._synced()
        end = time.perf_counter()
        return GenerationResult(
            output_ids=self.output,
            steps=self.steps,
            stats=self.stats,
            prefill_s=prefill_end - start,
            decode_s=end - prefill_end,
            wall_s=end - start,
            k_history=[s.k for s in self.steps],
            stop_reason=self.stop_reason,
            capture_s=capture_s,
            draft_capture_s=draft_capture_s,
        )

    def _stopped(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.stop_reason = "stopped"
            return True
        return False

    def _append(self, tokens: list[int]) -> tuple[list[int], int]:
        """Commit a step's tokens (up to EOS and the budget); (new tokens, room before)."""
        remaining = self.max_new - len(self.output)
        new = _committed(tokens, self.eos, remaining)
        self.output.extend(new)
        if new[-1] in self.eos:
            self.stop_reason = "eos"
        return new, remaining

    @property
    def finished(self) -> bool:
        return self.stop_reason == "eos" or len(self.output) >= self.max_new

    def _record(self, k, accepted, new, remaining, draft_s: float, verify_s: float) -> None:
        drafted = min(k, remaining)
        step = StepRecord(
            index=len(self.steps),
            drafted=drafted,
            accepted=min(accepted, drafted, len(new)),
            committed=len(new),
            draft_s=draft_s,
            verify_s=verify_s,
            k=k,
        )
        self.steps.append(step)
        self.stats.add(step)
        self.schedule.update(k, accepted)
        if self.on_step is not None:
            self.on_step(step, new)

    def _pipelined(self) -> None:
        """Whole steps on the device (draft burst, verification, both commits), queued
        ahead; the host reads each step's accepted count and tokens after one event."""
        tg, dg = self.tg, self.dg
        sampled = self.mode == SAMPLED
        ring = _HostRing(PIPELINE_DEPTH + 1, max(self.ks or [0]) + 2, tg.head_device)
        queued: deque[_Launched] = deque()

        def launch() -> None:
            k = self.schedule.k if self.drafting else 0
            if k:
                d0 = dg.clock.mark()
                dg.run("burst", k, self.step_mode)
                d1 = dg.clock.mark()
                tg.load_drafts(dg.draft_out[:k], dg.q_x[:k] if sampled else None)
                if sampled:
                    tg.load_q_rows(dg.q_rows[:k])
                v0 = tg.clock.mark()
                tg.run("verify", k, self.mode)
                v1 = tg.clock.mark()
                dg.commit_draft(tg.accepted, tg.last[tg.head_device])
            else:
                d0 = d1 = None
                v0 = tg.clock.mark()
                tg.run("step", 1, self.step_mode)
                v1 = tg.clock.mark()
            slot, done = ring.send(tg.result, k + 2)
            queued.append(_Launched(k, (d0, d1, v0, v1), slot, done))

        while not self._stopped():
            while len(queued) < PIPELINE_DEPTH and len(self.output) + len(queued) < self.max_new:
                launch()
            job = queued.popleft()
            values = ring.receive(job.slot, job.done, job.k + 2)
            accepted = values[0]
            d0, d1, v0, v1 = job.marks
            draft_s = dg.clock.seconds(d0, d1) if job.k else 0.0
            verify_s = tg.clock.seconds(v0, v1)
            new, remaining = self._append(values[1 : accepted + 2])
            self._record(job.k, accepted, new, remaining, draft_s, verify_s)
            if self.finished:
                break

    def _synced(self) -> None:
        """A drafter off the device path (remote, lean, transformers): its tokens go up,
        the graph verifies, and the host reads the verdict (one sync, two when sampling
        must fetch a q row)."""
        tg, drafter = self.tg, self.drafter
        while not self._stopped():
            k = self.schedule.k
            t0 = time.perf_counter()
            proposal = drafter.propose(k)
            drafts = proposal.tokens[:k]
            t1 = time.perf_counter()
            n = len(drafts)
            if n == 0:
                tg.prepare(self.tokens, steps=True, mode=self.step_mode)
                tg.run("step", 1, self.step_mode)
                accepted, tokens = 0, [int(tg.result[1])]
            else:
                if n not in self.ks:
                    tg.prepare(self.tokens, verify_ks=[n], mode=self.mode)
                q_x = None
                if self.mode != GREEDY:
                    q_x = torch.tensor(proposal.token_probs[:n], dtype=torch.float32)
                tg.load_drafts(torch.tensor(drafts, dtype=torch.long), q_x)
                tg.run("verify", n, self.mode)
                if self.mode == DEFERRED:
                    accepted = int(tg.accepted)
                    row = drafter.q_row(accepted) if accepted < n else None
                    tokens = [*drafts[:accepted], tg.finish_deferred(accepted, n, row)]
                else:
                    values = tg.result[: n + 2].tolist()
                    accepted, tokens = values[0], values[1 : values[0] + 2]
            t2 = time.perf_counter()
            new, remaining = self._append(tokens)
            if not self.finished:
                drafter.commit(accepted, tokens[-1])
            t3 = time.perf_counter()
            self._record(n, accepted, new, remaining, (t1 - t0) + (t3 - t2), t2 - t1)
            if self.finished:
                break


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
    target_decoder: GraphDecoder | None = None,
    on_capture: OnCapture | None = None,
    on_prefill: Callable[[], None] | None = None,
) -> GenerationResult:
    """Plain decoding with the target alone, through the same loop (AL is 1.0); with a
    `target_decoder`, one captured step per token, queued ahead of the host."""

    def on_step(step: StepRecord, tokens: list[int]) -> None:
        for token in tokens:
            on_token(token)  # type: ignore[misc]

    decoder = SpeculativeDecoder(target, _NoDrafter(), 1, temperature, seed, target_decoder)
    decoder.k = 0  # no drafts: every step is one target token
    if on_token is None:
        return decoder.generate(
            prompt_ids, max_new_tokens, on_capture=on_capture, on_prefill=on_prefill
        )
    return decoder.generate(
        prompt_ids,
        max_new_tokens,
        on_step,
        on_first_token=on_token,
        on_capture=on_capture,
        on_prefill=on_prefill,
    )


def _committed(tokens: list[int], eos: Collection[int], room: int) -> list[int]:
    """The tokens a step appends: up to and including the first EOS, at most `room`."""
    for i, token in enumerate(tokens):
        if token in eos:
            tokens = tokens[: i + 1]
            break
    return tokens[:room]
