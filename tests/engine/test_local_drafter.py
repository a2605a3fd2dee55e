"""The local drafter proposes what its model would, and keeps its cache in step."""

from __future__ import annotations

import numpy as np
import torch

from engine.local_drafter import LocalDrafter

PROMPT = [5, 17, 42, 99, 7]


def greedy_continuation(loaded, context: list[int], n: int) -> list[int]:
    """n greedy tokens after `context`, each from a fresh full forward (no cache)."""
    out = list(context)
    with torch.inference_mode():
        for _ in range(n):
            logits = loaded.model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(context) :]


def test_greedy_proposals_follow_the_committed_context(loaded_pair):
    _, draft = loaded_pair
    drafter = LocalDrafter(draft)
    drafter.begin(PROMPT, 0.0, 0)
    drafter.commit(0, 12)
    context = [*PROMPT, 12]

    first = drafter.propose(4)
    assert first.tokens == greedy_continuation(draft, context, 4)
    assert first.token_probs == []

    # partial acceptance: keep 2 drafts, then the target's correction 301
    drafter.commit(2, 301)
    context += [*first.tokens[:2], 301]
    assert drafter.cached_tokens == len(context) - 1
    second = drafter.propose(3)
    assert second.tokens == greedy_continuation(draft, context, 3)

    # full acceptance: the last draft and the bonus token are both pending
    drafter.commit(3, 8)
    context += [*second.tokens, 8]
    assert drafter.cached_tokens == len(context) - 2
    assert drafter.propose(2).tokens == greedy_continuation(draft, context, 2)


def test_sampled_proposals_carry_their_draft_probabilities(loaded_pair):
    _, draft = loaded_pair
    drafter = LocalDrafter(draft)
    drafter.begin(PROMPT, 0.8, 3)
    drafter.commit(0, 12)
    proposal = drafter.propose(3)
    assert len(proposal.tokens) == len(proposal.token_probs) == 3
    for i, (token, q) in enumerate(zip(proposal.tokens, proposal.token_probs, strict=True)):
        row = drafter.q_row(i)
        assert row.dtype == np.float32
        assert abs(float(row.sum()) - 1.0) < 1e-4
        assert abs(float(row[token]) - q) < 1e-6

    again = LocalDrafter(draft)
    again.begin(PROMPT, 0.8, 3)
    again.commit(0, 12)
    assert again.propose(3).tokens == proposal.tokens  # the seed decides the draws
