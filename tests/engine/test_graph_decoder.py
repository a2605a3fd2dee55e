"""The graph decode path's programs, run eagerly on the CPU: transformers' logits, greedy
output equal to target-only, full acceptance of a twin, the target's distribution under
sampling, and decode paths named. On a GPU the same programs are captured (see
test_gpu_graph_decoder.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import graph_decoder, local_drafter
from engine.graph_decoder import (
    GREEDY,
    DecodePath,
    GraphDecoder,
    graph_path,
    graph_unsupported,
    open_graph_decoder,
)
from engine.loading import LoadedModel
from engine.local_drafter import LocalDrafter
from engine.sampling import (
    accept_greedy,
    accept_sampled,
    accepted_count,
    residual,
    residual_row,
    sample_row,
    verify_greedy,
)
from engine.speculative import SpeculativeDecoder, target_only
from tests.engine.conftest import TINY_VOCAB
from tests.engine.test_fast_decoder import CONTEXT, llama, qwen2, qwen3, reference_logits
from tests.engine.test_speculative import exact_marginals, total_variation

MAKERS = {"llama": llama, "qwen3": qwen3, "qwen2": qwen2}


def loaded(model) -> LoadedModel:
    return LoadedModel(model=model, tokenizer=None, info=None, devices=("cpu",))


def small_draft():
    return llama(num_hidden_layers=1, hidden_size=24, num_attention_heads=2, num_key_value_heads=1)


@pytest.mark.parametrize("split", [None, 1])
@pytest.mark.parametrize("name", list(MAKERS))
def test_programs_give_transformers_logits_and_verdicts(name, split):
    """Prefill, then a verification of 3 drafts: logits and accepted count as transformers'
    argmax gives them; `split` cuts the layers into one stage each (the several-GPU path)."""
    model = MAKERS[name]()
    full = reference_logits(model, CONTEXT)
    decoder = GraphDecoder(model, capture=False, split_layers=split)
    assert len(decoder.stages) == (1 if split is None else len(model.model.layers))
    decoder.prepare(64, steps=True, verify_ks=[3], mode=GREEDY)
    decoder.begin(0.0, 0)
    logits = decoder.prefill(CONTEXT[:10])
    torch.testing.assert_close(logits[0], full[9], rtol=1e-4, atol=1e-5)
    first = int(torch.argmax(full[9]))
    choices = full[10:14].argmax(-1).tolist()  # after CONTEXT[:11], [:12], [:13], [:14]
    drafts = [*choices[:2], (choices[2] + 1) % 97]  # the third draft is wrong
    with torch.inference_mode():
        decoder.last[decoder.head_device].fill_(CONTEXT[10])
    decoder.load_drafts(torch.tensor(CONTEXT[11:14]))
    decoder.run("verify", 3, GREEDY)
    result = decoder.result.tolist()
    expected = verify_greedy(CONTEXT[11:14], choices)
    assert result[0] == expected.accepted
    assert int(decoder.length[decoder.head_device]) == 11 + expected.accepted
    assert first == int(torch.argmax(logits[0]))
    assert drafts[2] != choices[2]


@pytest.mark.parametrize(("k", "graph_draft"), [(1, True), (3, False), ("auto", True)])
def test_greedy_output_equals_target_only_on_the_graph_path(k, graph_draft):
    target = loaded(llama())
    reference = target_only(target, CONTEXT, 30, 0.0, 0)  # transformers' path
    graphs = GraphDecoder(target.model, capture=False)
    alone = target_only(target, CONTEXT, 30, 0.0, 0, target_decoder=graphs)
    assert alone.output_ids == reference.output_ids
    assert alone.stats.mean_acceptance_length == 1.0 and alone.stats.steps == 29
    drafter = LocalDrafter(loaded(small_draft()), graphs=graph_draft)
    assert drafter.decode_path == ("cuda-graph" if graph_draft else "lean")
    decoder = SpeculativeDecoder(target, drafter, k, 0.0, 0, target_decoder=graphs)
    result = decoder.generate(CONTEXT, 30)
    assert result.output_ids == reference.output_ids
    assert 1 + sum(s.committed for s in result.steps) == 30
    assert all(s.accepted <= s.drafted and s.committed <= s.drafted + 1 for s in result.steps)


def test_a_twin_draft_is_always_accepted_and_the_budget_is_exact():
    target = loaded(qwen3())
    graphs = GraphDecoder(target.model, capture=False)
    drafter = LocalDrafter(loaded(qwen3()), graphs=True)  # the same weights (seeded)
    seen: list[int] = []
    result = SpeculativeDecoder(target, drafter, 4, 0.0, 0, target_decoder=graphs).generate(
        CONTEXT, 23, on_step=lambda step, new: seen.extend(new)
    )
    assert result.new_tokens == 23 and [result.output_ids[0], *seen] == result.output_ids
    assert all(s.accepted == s.drafted for s in result.steps)
    assert result.stats.mean_acceptance_length == pytest.approx(22 / len(result.steps))
    assert [s.committed for s in result.steps][:4] == [5, 5, 5, 5]


@pytest.mark.parametrize("k", [1, 4])
def test_a_one_token_prompt_drafts_from_position_zero(k):
    """A one-token prompt leaves the draft's burst nothing before its last token: a twin
    draft still proposes exactly what the target decodes, every draft accepted."""
    target = loaded(qwen3())
    reference = target_only(target, CONTEXT[:1], 12, 0.0, 0)
    graphs = GraphDecoder(target.model, capture=False)
    drafter = LocalDrafter(loaded(qwen3()), graphs=True)
    result = SpeculativeDecoder(target, drafter, k, 0.0, 0, target_decoder=graphs).generate(
        CONTEXT[:1], 12
    )
    assert result.output_ids == reference.output_ids
    assert all(s.accepted == s.drafted for s in result.steps)


def test_a_prompt_longer_than_a_piece_prefills_in_pieces(monkeypatch):
    monkeypatch.setattr(graph_decoder, "PREFILL_CHUNK", 3)
    model = qwen3()
    full = reference_logits(model, CONTEXT)
    decoder = GraphDecoder(model, capture=False)
    decoder.prepare(64, steps=True)
    decoder.begin(0.0, 0)
    torch.testing.assert_close(decoder.prefill(CONTEXT[:10])[0], full[9], rtol=1e-4, atol=1e-5)
    assert int(decoder.length[decoder.head_device]) == 10
    target = loaded(model)
    alone = target_only(target, CONTEXT, 20, 0.0, 0, target_decoder=decoder)
    assert alone.output_ids == target_only(target, CONTEXT, 20, 0.0, 0).output_ids


@pytest.mark.parametrize("drafting", [True, False])
def test_capturing_is_over_before_the_prefill_begins(drafting):
    target = loaded(llama())
    graphs = GraphDecoder(target.model, capture=False)
    seen: list[str] = []
    options = dict(on_capture=seen.append, on_prefill=lambda: seen.append("prefill"))
    if drafting:
        drafter = LocalDrafter(loaded(small_draft()), graphs=True)
        SpeculativeDecoder(target, drafter, 3, 0.0, 0, target_decoder=graphs).generate(
            CONTEXT, 8, **options
        )
    else:
        target_only(target, CONTEXT, 8, 0.0, 0, target_decoder=graphs, **options)
    assert seen[-1] == "prefill" and seen.count("prefill") == 1
    assert len(seen) > 1 and all(text.startswith("capturing") for text in seen[:-1]), seen


def test_a_graph_draft_beside_a_target_off_the_graph_path_captures_before_the_prefill():
    target = loaded(llama())
    drafter = LocalDrafter(loaded(small_draft()), graphs=True)
    seen: list[str] = []
    result = SpeculativeDecoder(target, drafter, 3, 0.0, 0).generate(
        CONTEXT, 12, on_capture=seen.append, on_prefill=lambda: seen.append("prefill")
    )
    assert result.output_ids == target_only(target, CONTEXT, 12, 0.0, 0).output_ids
    assert seen[-1] == "prefill" and any("burst k=3" in text for text in seen)
    assert result.capture_s == result.draft_capture_s > 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_draft_whose_capture_fails_drafts_lean_in_the_same_run(monkeypatch, temperature):
    target = loaded(llama())
    graphs = GraphDecoder(target.model, capture=False)
    drafter = LocalDrafter(loaded(small_draft()), graphs=True)
    real = GraphDecoder.prepare

    def prepare(self, tokens, **options):
        if self is drafter.graph and options.get("burst_ks"):
            raise graph_decoder.CaptureError("capturing burst failed: out of memory")
        return real(self, tokens, **options)

    monkeypatch.setattr(GraphDecoder, "prepare", prepare)
    decoder = SpeculativeDecoder(target, drafter, 3, temperature, 7, target_decoder=graphs)
    result = decoder.generate(CONTEXT, 20)
    assert drafter.graph is None and drafter.decode_path == "lean"
    assert "out of memory" in drafter.path.reason
    if temperature == 0.0:
        assert result.output_ids == target_only(target, CONTEXT, 20, 0.0, 0).output_ids
    else:
        assert len(result.output_ids) == 20


def test_a_target_whose_capture_fails_decodes_through_transformers_and_says_why(monkeypatch):
    target = loaded(llama())
    graphs = GraphDecoder(target.model, capture=False)

    def prepare(self, tokens, **options):
        raise graph_decoder.CaptureError("capturing step failed: out of memory")

    monkeypatch.setattr(GraphDecoder, "prepare", prepare)
    alone = target_only(target, CONTEXT, 12, 0.0, 0, target_decoder=graphs)
    assert alone.fallback == "capturing step failed: out of memory"
    assert alone.output_ids == target_only(target, CONTEXT, 12, 0.0, 0).output_ids
    assert target_only(target, CONTEXT, 12, 0.0, 0).fallback is None


def test_prepare_reuses_what_it_captured_and_grows_for_longer_runs():
    decoder = GraphDecoder(llama(), capture=False)
    decoder.prepare(100, steps=True, verify_ks=[2])
    held = dict(decoder._programs)
    assert decoder.prepare(100, steps=True, verify_ks=[2]) == 0.0
    assert decoder._programs == held
    decoder.prepare(1000, steps=True, verify_ks=[2])
    assert decoder.capacity >= 1000 and decoder._programs.keys() == held.keys()


def test_a_long_generation_grows_the_draft_cache_without_losing_it(monkeypatch):
    """A drafter used without prepare() starts small and grows (keeping its cache)."""
    monkeypatch.setattr(local_drafter, "DEFAULT_HEADROOM", 8)
    monkeypatch.setattr(graph_decoder, "CAPACITY_STEP", 32)  # a first cache of 64 tokens
    target = loaded(llama())
    reference = target_only(target, CONTEXT, 90, 0.0, 0)
    drafter = LocalDrafter(loaded(small_draft()), graphs=True)
    result = SpeculativeDecoder(target, drafter, 3, 0.0, 0).generate(CONTEXT, 90)
    assert result.output_ids == reference.output_ids
    assert drafter.graph.capacity > 64


@pytest.mark.parametrize("graph_draft", [True, False])
def test_sampling_on_the_device_follows_the_target_distribution(tiny_vocab_pair, graph_draft):
    """As test_speculative's check, through the device acceptance: in-graph (draft q rows on
    the device) and deferred (the host fetches q at a rejection)."""
    target, draft = tiny_vocab_pair
    prompt, runs, tolerance = [3, 7, 1], 1000, 0.1
    p2, p3 = exact_marginals(target, prompt)
    q2, _ = exact_marginals(draft, prompt)
    assert total_variation(p2, q2) > 4 * tolerance
    graphs = GraphDecoder(target.model, capture=False)
    drafter = LocalDrafter(draft, graphs=graph_draft)
    counts2, counts3 = np.zeros(TINY_VOCAB), np.zeros(TINY_VOCAB)
    accepted = drafted = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(runs):
            decoder = SpeculativeDecoder(target, drafter, 2, 1.0, seed, target_decoder=graphs)
            result = decoder.generate(prompt, 3)
            counts2[result.output_ids[1]] += 1
            counts3[result.output_ids[2]] += 1
            accepted += result.stats.accepted
            drafted += result.stats.drafted
    finally:
        torch.set_num_threads(threads)
    assert 0.05 < accepted / drafted < 0.95
    assert total_variation(counts2 / runs, p2) < tolerance
    assert total_variation(counts3 / runs, p3) < tolerance


def test_device_acceptance_matches_the_host_rules():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(0, 6, (1,), generator=gen))
        choices = torch.randint(0, 3, (k + 1,), generator=gen)
        drafts = torch.randint(0, 3, (k,), generator=gen)
        want = verify_greedy(drafts.tolist(), choices.tolist()).accepted
        assert int(accept_greedy(choices, drafts)) == want
        p, q, u = (torch.rand(k, generator=gen) for _ in range(3))
        want = accepted_count(p.tolist(), q.tolist(), u.tolist())
        assert int(accept_sampled(p, q, u)) == want
    p_row = torch.softmax(torch.randn(7, generator=gen), -1)
    q_row = torch.softmax(torch.randn(7, generator=gen), -1)
    torch.testing.assert_close(residual_row(p_row, q_row), residual(p_row, q_row.numpy()))
    torch.testing.assert_close(residual_row(p_row, torch.zeros(7)), p_row)
    counts = torch.bincount(
        torch.stack([sample_row(p_row, gen) for _ in range(20000)]), minlength=7
    )
    assert total_variation((counts / 20000).numpy(), p_row.numpy()) < 0.02


def test_decode_paths_are_named_with_their_reasons():
    model = llama()
    assert "CUDA" in graph_unsupported(model)
    decoder, path = open_graph_decoder(model)
    assert decoder is None and path.name == "transformers" and "CUDA" in path.reason
    drafter = LocalDrafter(loaded(llama()))
    assert drafter.path == DecodePath("lean", drafter.path.reason)
    assert "CUDA" in drafter.path.reason
    assert drafter.path.as_dict() == {
        "path": "lean",
        "reason": drafter.path.reason,
        "capture_s": 0.0,
    }
    # on the graph path (eager here) the path names the kernels its graphs hold, and why
    # not the fastest: a role that falls back to torch's ops inside its graphs says so
    graph_drafter = LocalDrafter(loaded(llama()), graphs=True)
    assert graph_drafter.path.as_dict() == {
        "path": "cuda-graph",
        "reason": None,
        "capture_s": 0.0,
        "kernels": "torch",
        "kernels_reason": graph_drafter.graph.kernels_reason,
    }
    assert graph_drafter.graph.kernels_reason  # Triton missing, or not on CUDA
    decoder = graph_drafter.graph
    decoder.gemv, decoder.burst_products = True, False
    decoder.burst_products_ms = {"triton": 1.5, "cublas": 1.25}
    assert graph_path(decoder).kernels_reason.endswith(
        "bursts multiply through cuBLAS: 1.25 against 1.50 ms"
    )
