"""The speculative loop: exact under greedy, target-distributed under sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.catalog import describe_model
from engine.errors import EngineInputError
from engine.loading import load_model
from engine.local_drafter import LocalDrafter
from engine.speculative import K_MAX, KSchedule, SpeculativeDecoder, target_only
from tests.engine.conftest import TINY_VOCAB

PROMPTS = ["def parse(text):\n    ", "class Path:", "import json\n\nx = json.loads("]


def prompt_ids(loaded, text: str) -> list[int]:
    return list(loaded.tokenizer(text)["input_ids"])


def reference(loaded, ids: list[int], n: int) -> list[int]:
    """What transformers' own greedy generate() produces with the target alone."""
    with torch.inference_mode():
        out = loaded.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def greedy_references(loaded_pair):
    """(prompt ids, 24 tokens of the target's own greedy generate()) per prompt."""
    target, _ = loaded_pair
    return [(ids, reference(target, ids, 24)) for ids in (prompt_ids(target, t) for t in PROMPTS)]


@pytest.mark.parametrize("k", [1, 3, 6, "auto"])
def test_greedy_output_equals_target_alone(loaded_pair, greedy_references, k):
    target, draft = loaded_pair
    for ids, expected in greedy_references:
        result = SpeculativeDecoder(target, LocalDrafter(draft), k, 0.0, 0).generate(ids, 24)
        assert result.output_ids == expected, k
        assert result.new_tokens == 24
        assert 1 + sum(s.committed for s in result.steps) == 24
        assert all(s.accepted <= s.drafted and s.committed <= s.drafted + 1 for s in result.steps)


def test_target_only_matches_generate_with_acceptance_length_one(loaded_pair):
    target, _ = loaded_pair
    ids = prompt_ids(target, PROMPTS[0])
    seen: list[int] = []
    result = target_only(target, ids, 20, 0.0, 0, on_token=seen.append)
    assert result.output_ids == reference(target, ids, 20) == seen
    assert result.stats.mean_acceptance_length == 1.0
    assert all(s.drafted == 0 for s in result.steps) and result.stats.steps == 19
    assert result.decode_tokens_per_s is not None and result.prefill_s > 0


@pytest.mark.parametrize("k", [2, 5])
def test_twin_draft_is_always_fully_accepted(loaded_twin_pair, k):
    target, draft = loaded_twin_pair
    ids = prompt_ids(target, PROMPTS[1])
    result = SpeculativeDecoder(target, LocalDrafter(draft), k, 0.0, 0).generate(ids, 23)
    *full, last = result.steps
    assert all(s.drafted == s.accepted == k and s.committed == k + 1 for s in full)
    assert last.accepted == last.drafted  # the last step is clipped to what is left
    assert result.stats.acceptance_rate == 1.0
    assert result.stats.per_position_acceptance == [1.0] * k
    assert result.output_ids == reference(target, ids, 23)


def test_max_new_tokens_is_exact_and_steps_are_reported(loaded_twin_pair):
    target, draft = loaded_twin_pair
    ids = prompt_ids(target, PROMPTS[2])
    seen = []
    result = SpeculativeDecoder(target, LocalDrafter(draft), 6, 0.0, 0).generate(
        ids, 10, on_step=lambda step, tokens: seen.append((step, tokens))
    )
    assert result.new_tokens == 10
    assert [s for s, _ in seen] == result.steps
    assert [t for _, tokens in seen for t in tokens] == result.output_ids[1:]
    assert result.steps[0].committed == 7 and result.steps[1].committed == 2
    assert result.steps[1].k == 6 and result.steps[1].drafted == 2
    assert result.decode_s > 0 and result.wall_s >= result.prefill_s + result.decode_s * 0.99


def test_generation_stops_at_eos_and_keeps_it(tiny_pair):
    target = load_model(describe_model(tiny_pair[0]), ["cpu"])
    draft = load_model(describe_model(tiny_pair[1]), ["cpu"])
    ids = prompt_ids(target, PROMPTS[0])
    free_run = reference(target, ids, 12)
    stop_token = free_run[5]
    target.model.generation_config.eos_token_id = stop_token
    result = SpeculativeDecoder(target, LocalDrafter(draft), 4, 0.0, 0).generate(ids, 12)
    assert result.output_ids == free_run[: free_run.index(stop_token) + 1]
    assert result.stop_reason == "eos"


def test_should_stop_ends_the_run_early(loaded_pair):
    target, draft = loaded_pair
    ids = prompt_ids(target, PROMPTS[0])
    calls = iter([False, False, True])
    decoder = SpeculativeDecoder(target, LocalDrafter(draft), 2, 0.0, 0)
    result = decoder.generate(ids, 50, should_stop=lambda: next(calls))
    assert result.stats.steps == 2 and result.stop_reason == "stopped"


def test_auto_k_grows_on_full_acceptance_and_shrinks_on_rejection(loaded_twin_pair):
    schedule = KSchedule("auto")
    assert schedule.k == 4
    schedule.update(drafted=4, accepted=4)
    assert schedule.k == 5
    schedule.update(drafted=5, accepted=0)
    schedule.update(drafted=4, accepted=2)  # partial: unchanged
    assert schedule.k == 4
    for _ in range(30):
        schedule.update(drafted=schedule.k, accepted=schedule.k)
    assert schedule.k == K_MAX
    for _ in range(30):
        schedule.update(drafted=schedule.k, accepted=0)
    assert schedule.k == 1

    target, draft = loaded_twin_pair
    ids = prompt_ids(target, PROMPTS[0])
    result = SpeculativeDecoder(target, LocalDrafter(draft), "auto", 0.0, 0).generate(ids, 40)
    assert result.k_history[:4] == [4, 5, 6, 7]
    assert result.k_history == [s.k for s in result.steps]


@pytest.mark.parametrize("k", [0, -1, "many", 2.5])
def test_bad_k_is_an_input_error(loaded_pair, k):
    target, draft = loaded_pair
    with pytest.raises(EngineInputError, match="k must be"):
        SpeculativeDecoder(target, LocalDrafter(draft), k, 0.0, 0)


def next_token_probs(model, seqs: list[list[int]]) -> torch.Tensor:
    """The model's next-token distribution after each sequence (float64)."""
    with torch.inference_mode():
        return torch.softmax(model.model(torch.tensor(seqs)).logits[:, -1].double(), -1)


def exact_first_acceptance(target, draft, prompt: list[int]) -> float:
    """P(first draft accepted) = sum_t1 p(t1) sum_x min(p(x | t1), q(x | t1))."""
    p1 = next_token_probs(target, [prompt])[0]
    after = [[*prompt, a] for a in range(TINY_VOCAB)]
    overlap = torch.minimum(next_token_probs(target, after), next_token_probs(draft, after))
    return float(p1 @ overlap.sum(-1))


def exact_marginals(model, prompt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Exact distributions of the 2nd and 3rd sampled tokens (T = 1), by enumeration."""
    v = TINY_VOCAB
    p1 = next_token_probs(model, [prompt])[0]
    p2_given = next_token_probs(model, [[*prompt, a] for a in range(v)])
    p3_given = next_token_probs(model, [[*prompt, a, b] for a in range(v) for b in range(v)])
    p3_given = p3_given.view(v, v, v)
    p2 = p1 @ p2_given
    p3 = torch.einsum("a,ab,abc->c", p1, p2_given, p3_given)
    return p2.numpy(), p3.numpy()


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def test_sampling_follows_the_target_distribution(tiny_vocab_pair):
    """Speculative samples of tokens 2 and 3 match the target's exact marginals; a sampler
    that followed the draft instead would miss by far more than the tolerance."""
    target, draft = tiny_vocab_pair
    prompt, runs = [3, 7, 1], 1000
    p2, p3 = exact_marginals(target, prompt)
    q2, _ = exact_marginals(draft, prompt)
    # 1000 exact draws from p2 or p3 land within TV 0.055 on average and 0.1 in 99.99% of
    # tries; a sampler that kept every draft would follow q2, 0.42 away from p2
    tolerance = 0.1
    assert total_variation(p2, q2) > 4 * tolerance

    counts2, counts3 = np.zeros(TINY_VOCAB), np.zeros(TINY_VOCAB)
    drafter = LocalDrafter(draft)
    accepted = drafted = first_accepted = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: threads only add overhead
    try:
        for seed in range(runs):
            result = SpeculativeDecoder(target, drafter, 2, 1.0, seed).generate(prompt, 3)
            counts2[result.output_ids[1]] += 1
            counts3[result.output_ids[2]] += 1
            accepted += result.stats.accepted
            drafted += result.stats.drafted
            first_accepted += result.steps[0].accepted >= 1
    finally:
        torch.set_num_threads(threads)
    assert 0.05 < accepted / drafted < 0.95  # both branches (accept, resample) were exercised
    expected = exact_first_acceptance(target, draft, prompt)
    sigma = (expected * (1 - expected) / runs) ** 0.5
    assert abs(first_accepted / runs - expected) < 4 * sigma  # accepted with min(1, p/q)
    assert total_variation(counts2 / runs, p2) < tolerance
    assert total_variation(counts3 / runs, p3) < tolerance


def test_sampled_runs_repeat_with_a_seed(loaded_pair):
    target, draft = loaded_pair
    ids = prompt_ids(target, PROMPTS[2])

    def run(seed):
        return SpeculativeDecoder(target, LocalDrafter(draft), 3, 0.9, seed).generate(ids, 16)

    first = run(11)
    assert first.output_ids == run(11).output_ids
    assert first.output_ids != run(12).output_ids
