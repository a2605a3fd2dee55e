"""Token choice and the speculative acceptance rule, as functions a test can call on the CPU.

Greedy: accept the longest prefix of drafts equal to the target's argmax, then commit the
target's own choice at the first mismatch (or after the last draft). Sampling (Leviathan et
al. 2023, Chen et al. 2023): accept draft x_i with probability min(1, p(x_i) / q(x_i)); at the
first rejection sample from norm(max(0, p - q)); after full acceptance sample from p. The
committed tokens are then distributed exactly as sampling from the target alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one proposal."""

    accepted: int  # leading draft tokens kept
    next_token: int  # the target's bonus (all accepted) or correction token


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in float32, row-wise."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def stream_seed(seed: int | None, stream: int) -> int | None:
    """An independent seed for another random stream of the same run (None stays None)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class TokenSampler:
    """Seeded draws for one generation: categorical samples and acceptance uniforms."""

    def __init__(self, temperature: float, seed: int | None) -> None:
        self.temperature = temperature
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax."""
        return self.temperature <= 0

    def generator(self, device: torch.device) -> torch.Generator:
        """One generator per device, seeded from the run's seed."""
        if device not in self._generators:
            gen = torch.Generator(device=device)
            if self.seed is None:
                gen.seed()
            else:
                gen.manual_seed(self.seed)
            self._generators[device] = gen
        return self._generators[device]

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """A token (0-d tensor on the logits' device) from one row of logits."""
        if self.greedy:
            return torch.argmax(logits, dim=-1)
        return self.sample(probabilities(logits, self.temperature))

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw from a probability row (0-d tensor)."""
        return torch.multinomial(probs, 1, generator=self.generator(probs.device))[0]

    def uniforms(self, n: int, device: torch.device) -> torch.Tensor:
        """n draws from U[0, 1)."""
        return torch.rand(n, generator=self.generator(device), device=device)


def verify_greedy(drafts: Sequence[int], target_choices: Sequence[int]) -> Verdict:
    """target_choices[i] is the target's argmax after drafts[:i] (len(drafts) + 1 entries)."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == target_choices[accepted]:
        accepted += 1
    return Verdict(accepted, int(target_choices[accepted]))


def accepted_count(
    p_drafts: Sequence[float], q_drafts: Sequence[float], uniforms: Sequence[float]
) -> int:
    """Leading drafts accepted: draft i stays while u_i < p(x_i) / q(x_i)."""
    for i, (p, q, u) in enumerate(zip(p_drafts, q_drafts, uniforms, strict=True)):
        if not u * q < p:  # u < min(1, p/q) without dividing by a tiny q
            return i
    return len(p_drafts)


def residual(p_row: torch.Tensor, q_row: np.ndarray) -> torch.Tensor:
    """norm(max(0, p - q)) on p's device and width; p itself where p <= q everywhere."""
    q = torch.from_numpy(np.asarray(q_row, dtype=np.float32)).to(p_row.device)
    width = p_row.shape[-1]
    if q.shape[-1] < width:  # a draft vocabulary narrower than the target's: no mass there
        q = torch.nn.functional.pad(q, (0, width - q.shape[-1]))
    diff = torch.clamp(p_row - q[:width], min=0.0)
    total = diff.sum()
    return diff / total if total > 0 else p_row


def verify_sampled(
    probs: torch.Tensor,
    drafts: Sequence[int],
    q_drafts: Sequence[float],
    q_row: Callable[[int], np.ndarray],
    sampler: TokenSampler,
) -> Verdict:
    """Speculative sampling over target rows `probs` ([len(drafts) + 1, V])."""
    k = len(drafts)
    width = probs.shape[-1]
    if k:
        in_vocab = [min(t, width - 1) for t in drafts]
        index = torch.tensor(in_vocab, device=probs.device)
        p_drafts = probs[torch.arange(k, device=probs.device), index]
        p_drafts = torch.where(index == torch.tensor(drafts, device=probs.device), p_drafts, 0.0)
        u = sampler.uniforms(k, probs.device)
        p_list, u_list = torch.stack([p_drafts, u]).tolist()  # one device sync
        accepted = accepted_count(p_list, q_drafts, u_list)
    else:
        accepted = 0
    row = residual(probs[accepted], q_row(accepted)) if accepted < k else probs[k]
    return Verdict(accepted, int(sampler.sample(row)))


# -- the same rules on device tensors, without a host sync (the CUDA-graph path) ----------


def accept_greedy(choices: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """Leading drafts equal to the target's choices (0-d tensor); `choices` has k + 1 rows."""
    k = drafts.shape[0]
    return (choices[:k] == drafts).long().cumprod(0).sum()


def accept_sampled(
    p_drafts: torch.Tensor, q_drafts: torch.Tensor, uniforms: torch.Tensor
) -> torch.Tensor:
    """`accepted_count` on tensors: draft i stays while u_i * q(x_i) < p(x_i) (0-d tensor)."""
    return (uniforms * q_drafts < p_drafts).long().cumprod(0).sum()


def residual_row(p_row: torch.Tensor, q_row: torch.Tensor) -> torch.Tensor:
    """`residual` on tensors of one width: norm(max(0, p - q)), or p where p <= q everywhere
    (q all zeros, as after full acceptance, gives p)."""
    diff = torch.clamp(p_row - q_row, min=0.0)
    total = diff.sum()
    return torch.where(total > 0, diff / total, p_row)


def sample_row(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from a probability row (0-d) with no host sync: argmax of p / Exp(1) noise,
    which picks token i with probability p_i (the exponential race)."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)  # a zero draw would make 0/0 = nan win
    return torch.argmax(probs / noise, dim=-1)
