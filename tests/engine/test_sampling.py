"""The acceptance rule's pieces, checked on hand-made numbers."""

from __future__ import annotations

import numpy as np
import torch

from engine.sampling import (
    TokenSampler,
    Verdict,
    accepted_count,
    residual,
    stream_seed,
    verify_greedy,
    verify_sampled,
)


def test_greedy_accepts_the_matching_prefix_and_takes_the_targets_token():
    assert verify_greedy([4, 5, 6], [4, 5, 9, 1]) == Verdict(2, 9)
    assert verify_greedy([4, 5, 6], [4, 5, 6, 1]) == Verdict(3, 1)  # all accepted: bonus
    assert verify_greedy([], [7]) == Verdict(0, 7)


def test_acceptance_probability_is_min_one_p_over_q():
    # p/q = 0.5 accepts below u = 0.5 only; p >= q always accepts
    assert accepted_count([0.2, 0.3], [0.4, 0.1], [0.49, 0.99]) == 2
    assert accepted_count([0.2, 0.3], [0.4, 0.1], [0.51, 0.0]) == 0
    assert accepted_count([0.0], [1e-30], [0.0]) == 0  # p = 0 never accepts


def test_residual_is_the_normalized_positive_part():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3], dtype=np.float32)
    torch.testing.assert_close(residual(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual(p, p.numpy()), p)  # no positive part: p itself
    narrow = residual(torch.tensor([0.25, 0.25, 0.5]), np.array([0.5, 0.5], dtype=np.float32))
    torch.testing.assert_close(narrow, torch.tensor([0.0, 0.0, 1.0]))  # q is 0 past its width


def test_rejection_resamples_from_the_residual_only():
    probs = torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    q = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    for seed in range(20):
        verdict = verify_sampled(probs, [0], [1.0], lambda i: q, TokenSampler(1.0, seed))
        assert verdict == Verdict(0, 1)  # p(0) = 0: rejected; the residual puts all mass on 1


def test_streams_of_one_seed_differ_and_repeat():
    assert stream_seed(5, 1) == stream_seed(5, 1) != stream_seed(5, 2)
    assert stream_seed(5, 1) != 5 and stream_seed(None, 1) is None
