"""On an NVIDIA GPU, float32: the captured programs give transformers' logits, greedy
speculative output equals target-only output of the same path token for token, a twin
draft is always accepted, and a layer split into per-stage graphs changes nothing
(skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from engine.catalog import describe_model
from engine.graph_decoder import GREEDY, GraphDecoder, open_graph_decoder
from engine.loading import LoadedModel, load_model
from engine.local_drafter import LocalDrafter
from engine.speculative import SpeculativeDecoder, target_only
from tests.engine.test_fast_decoder import CONTEXT, llama, qwen2, qwen3

pytestmark = pytest.mark.gpu

MAKERS = {"llama": llama, "qwen3": qwen3, "qwen2": qwen2}


def reference_logits(model, context: list[int]) -> torch.Tensor:
    """transformers' logits at every position, one forward with no cache, on the GPU."""
    with torch.inference_mode():
        return model(torch.tensor([context], device="cuda:0")).logits[0]


def on_gpu(model) -> LoadedModel:
    model = model.to("cuda:0", torch.float32)
    return LoadedModel(model=model, tokenizer=None, info=None, devices=("cuda:0",))


@pytest.mark.parametrize("split", [None, 1])
@pytest.mark.parametrize("name", list(MAKERS))
def test_captured_programs_give_transformers_logits(name, split):
    target = on_gpu(MAKERS[name]())
    full = reference_logits(target.model, CONTEXT)
    decoder = GraphDecoder(target.model, split_layers=split)
    assert decoder.capture
    decoder.prepare(64, steps=True, verify_ks=[3], mode=GREEDY)
    assert all(p.graph is not None for p in decoder._programs[("verify", 3, GREEDY)].pieces)
    decoder.begin(0.0, 0)
    first = decoder.start_target(CONTEXT[:10])
    assert first == int(full[9].argmax())
    with torch.inference_mode():
        decoder.last[decoder.head_device].fill_(CONTEXT[10])
    decoder.load_drafts(torch.tensor(CONTEXT[11:14]))
    decoder.run("verify", 3, GREEDY)
    choices = full[10:14].argmax(-1).tolist()
    accepted = decoder.result[0].item()
    assert decoder.result[1 : accepted + 2].tolist() == choices[: accepted + 1]


@pytest.mark.parametrize("k", [1, 4, "auto"])
@pytest.mark.parametrize("name", list(MAKERS))
def test_greedy_speculative_equals_target_only_float32(name, k):
    target = on_gpu(MAKERS[name]())
    reference = target_only(target, CONTEXT, 48, 0.0, 0)  # transformers' own forward
    graphs, path = open_graph_decoder(target.model)
    assert path.name == "cuda-graph" and path.reason is None
    alone = target_only(target, CONTEXT, 48, 0.0, 0, target_decoder=graphs)
    assert alone.output_ids == reference.output_ids
    draft = on_gpu(llama(num_hidden_layers=1, hidden_size=24, num_attention_heads=2))
    drafter = LocalDrafter(draft)
    assert drafter.decode_path == "cuda-graph"
    result = SpeculativeDecoder(target, drafter, k, 0.0, 0, target_decoder=graphs).generate(
        CONTEXT, 48
    )
    assert result.output_ids == alone.output_ids
    assert result.capture_s >= 0 and result.decode_tokens_per_s


@pytest.mark.parametrize("length", [200, 1500])
def test_long_prompts_prefill_in_pieces_and_stay_exact(length):
    """200 tokens x 2 query heads a KV head fit attention's decode kernel; 1,500 go through
    torch's ops in two pieces. Both: transformers' logits, and speculative = target-only."""
    target = on_gpu(qwen3(max_position_embeddings=4096))
    prompt = torch.randint(0, 97, (length,), generator=torch.Generator().manual_seed(5)).tolist()
    full = reference_logits(target.model, prompt)
    graphs = GraphDecoder(target.model)
    assert graphs.kernels != "torch", graphs.kernels_reason
    graphs.prepare(length + 64, steps=True)
    graphs.begin(0.0, 0)
    torch.testing.assert_close(graphs.prefill(prompt)[0], full[-1], rtol=1e-3, atol=1e-3)
    alone = target_only(target, prompt, 24, 0.0, 0, target_decoder=graphs)
    assert alone.output_ids == target_only(target, prompt, 24, 0.0, 0).output_ids
    twin = LocalDrafter(on_gpu(qwen3(max_position_embeddings=4096)))
    spec = SpeculativeDecoder(target, twin, 4, 0.0, 0, target_decoder=graphs)
    result = spec.generate(prompt, 24)
    assert result.output_ids == alone.output_ids
    assert all(s.accepted == s.drafted for s in result.steps)


def test_a_twin_draft_is_always_accepted_on_the_gpu():
    target, twin = on_gpu(qwen3()), on_gpu(qwen3())
    graphs = GraphDecoder(target.model)
    decoder = SpeculativeDecoder(target, LocalDrafter(twin), 5, 0.0, 0, target_decoder=graphs)
    result = decoder.generate(CONTEXT, 61)
    assert all(s.accepted == s.drafted for s in result.steps)
    assert result.stats.mean_acceptance_length == 6.0
    again = decoder.generate(CONTEXT, 61)  # the same graphs: nothing captured twice
    assert again.capture_s == 0.0 and again.output_ids == result.output_ids


@pytest.mark.parametrize("graph_draft", [True, False])
def test_sampled_runs_on_the_gpu_repeat_with_a_seed(graph_draft):
    target = on_gpu(llama())
    graphs = GraphDecoder(target.model)
    drafter = LocalDrafter(on_gpu(llama(num_hidden_layers=1)), graphs=graph_draft)

    def run(seed):
        decoder = SpeculativeDecoder(target, drafter, 3, 0.9, seed, target_decoder=graphs)
        return decoder.generate(CONTEXT, 40).output_ids

    first = run(11)
    assert len(first) == 40 and all(0 <= t < 97 for t in first)
    assert first == run(11)


def test_the_tiny_pair_loaded_by_specdeck_is_exact_on_the_graph_path(tiny_pair):
    target = load_model(describe_model(tiny_pair[0]), ["cuda:0"], dtype="float32")
    draft = load_model(describe_model(tiny_pair[1]), ["cuda:0"], dtype="float32")
    ids = list(target.tokenizer("def parse(text):")["input_ids"])
    graphs, _ = open_graph_decoder(target.model)
    base = target_only(target, ids, 64, 0.0, 0, target_decoder=graphs)
    hf = target_only(target, ids, 64, 0.0, 0)
    spec = SpeculativeDecoder(target, LocalDrafter(draft), 4, 0.0, 0, target_decoder=graphs)
    assert spec.generate(ids, 64).output_ids == base.output_ids == hf.output_ids


def test_programs_are_captured_again_after_the_buffers_grow():
    """Growing k or the cache drops every graph; new captures get new memory pools (torch
    asserts on a capture into a pool whose graphs were all freed)."""
    decoder = GraphDecoder(on_gpu(llama()).model)
    decoder.prepare(64, burst_ks=[1])
    decoder.prepare(64, burst_ks=[5])  # a larger k: new buffers, every program again
    decoder.prepare(2000, burst_ks=[5])  # a larger cache: the same
    decoder.begin(0.0, 0)
    decoder.start_draft(CONTEXT)
    decoder.run("burst", 5)
    assert decoder.capacity >= 2000 and len(decoder.draft_out[:5].tolist()) == 5
