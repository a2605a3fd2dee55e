"""The lean decode path gives transformers' logits, rolls back, and steps aside when unsure."""

from __future__ import annotations

import sys

import pytest
import torch

from engine import fast_decoder
from engine.fast_decoder import HFDecoder, LeanDecoder, lean_unsupported, open_decoder
from engine.loading import LoadedModel
from engine.local_drafter import LocalDrafter

VOCAB = 97
CONTEXT = [3, 41, 7, 88, 15, 60, 2, 33, 71, 9, 50, 12, 64, 27, 5, 80]


def llama(**overrides):
    """A tiny random Llama with grouped-query attention (3 query heads per KV head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    options = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    options.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**options)).eval()


def qwen3(**overrides):
    """A tiny random Qwen3 (per-head RMSNorm of queries and keys, tied embeddings)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    options = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    options.update(overrides)
    return Qwen3ForCausalLM(Qwen3Config(**options)).eval()


def mistral(**overrides):
    """A tiny random Mistral."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(2)
    options = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    options.update(overrides)
    return MistralForCausalLM(MistralConfig(**options)).eval()


def qwen2(**overrides):
    """A tiny random Qwen2 (biases on q/k/v, no query/key norm), as most small drafts are."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    options = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    options.update(overrides)
    model = Qwen2ForCausalLM(Qwen2Config(**options)).eval()
    with torch.no_grad():  # random biases, so that a path ignoring them fails
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.2)
    return model


def reference_logits(model, context: list[int]) -> torch.Tensor:
    """transformers' logits at every position of `context`, one forward with no cache."""
    with torch.inference_mode():
        return model(torch.tensor([context])).logits[0]


def ids(tokens: list[int]) -> torch.Tensor:
    return torch.tensor(tokens, dtype=torch.long)


SUPPORTED = {
    "llama": lambda: llama(),
    "llama-bias-tied": lambda: llama(attention_bias=True, tie_word_embeddings=True),
    "llama-linear-rope": lambda: llama(
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    ),
    "qwen3": lambda: qwen3(),
    "qwen2": lambda: qwen2(),
    "mistral-no-window": lambda: mistral(sliding_window=None),
}


@pytest.mark.parametrize("matmul", ["torch", "numpy"])
@pytest.mark.parametrize("name", list(SUPPORTED))
def test_lean_logits_match_transformers_through_decode_and_rollback(name, matmul, monkeypatch):
    monkeypatch.setattr(fast_decoder, "INITIAL_CAPACITY", 8)  # the cache must grow twice
    model = SUPPORTED[name]()
    assert lean_unsupported(model) is None
    decoder = LeanDecoder(model, matmul)
    assert decoder.matmul == matmul
    close = dict(rtol=1e-4, atol=1e-5)
    full = reference_logits(model, CONTEXT)
    with torch.inference_mode():
        prefill = decoder.forward(ids(CONTEXT[:9]))  # the prompt at once, past the capacity
        torch.testing.assert_close(prefill, full[:9], **close)
        for i in range(9, 13):  # single-token decode steps
            torch.testing.assert_close(decoder.forward(ids([CONTEXT[i]])), full[i : i + 1], **close)
        assert decoder.length == 13

        decoder.crop(10)  # roll back three tokens, then continue on another branch
        branch = [*CONTEXT[:10], 90, 1, 44, 70, 8, 19]
        expected = reference_logits(model, branch)
        chunk = decoder.forward(ids(branch[10:13]))  # a verification-like chunk
        torch.testing.assert_close(chunk, expected[10:13], **close)
        for i in range(13, 16):
            last = decoder.forward(ids([branch[i]]), last_only=True)
            torch.testing.assert_close(last, expected[i : i + 1], **close)
    assert decoder.capacity >= 16


def test_stacked_projections_share_the_models_weights_and_keep_its_logits():
    model = llama(attention_bias=True)
    before = reference_logits(model, CONTEXT)
    params = sum(p.numel() for p in model.parameters())
    decoder = LeanDecoder(model, "numpy")
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    storage = attn.q_proj.weight.untyped_storage().data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == storage  # one copy, not two
    assert attn.v_proj.weight.untyped_storage().data_ptr() == storage
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == (
        mlp.up_proj.weight.untyped_storage().data_ptr()
    )
    assert decoder.layers[0].qkv[0].t().is_contiguous()  # column-major on a CPU in float32
    assert decoder.lm_head.t().is_contiguous()
    assert sum(p.numel() for p in model.parameters()) == params
    torch.testing.assert_close(reference_logits(model, CONTEXT), before, rtol=1e-5, atol=1e-6)


def test_matmul_choice_follows_the_probe(monkeypatch):
    from threadpoolctl import threadpool_info

    def numpy_blas_threads():
        return {p["num_threads"] for p in threadpool_info() if "openblas" in p["filepath"]}

    assert LeanDecoder(llama(), "auto").matmul in ("torch", "numpy")  # the real probe runs
    threads = numpy_blas_threads()
    monkeypatch.setattr(LeanDecoder, "_probe_numpy_wins", lambda self: False)
    assert LeanDecoder(llama(), "auto").matmul == "torch"
    assert numpy_blas_threads() == threads  # torch chosen: numpy's BLAS as it was
    monkeypatch.setattr(LeanDecoder, "_probe_numpy_wins", lambda self: True)
    assert LeanDecoder(llama(), "auto").matmul == "numpy"
    assert numpy_blas_threads() == {1}
    with pytest.raises(ValueError, match="matmul must be one of"):
        LeanDecoder(llama(), "blas")
    with pytest.raises(ValueError, match="needs float32 weights on the CPU"):
        LeanDecoder(llama().to(torch.bfloat16), "numpy")
    bf16 = LeanDecoder(llama().to(torch.bfloat16))  # keeps its layout and torch's products
    assert bf16.matmul == "torch"
    assert bf16.layers[0].qkv[0].is_contiguous()


def test_numpy_products_keep_numpys_blas_on_one_thread():
    from threadpoolctl import threadpool_info

    LeanDecoder(llama(), "numpy")
    numpy_blas = [
        pool
        for pool in threadpool_info()
        if pool["user_api"] == "blas" and "openblas" in pool["filepath"].lower()
    ]
    assert numpy_blas, "numpy's wheel bundles OpenBLAS"
    assert {pool["num_threads"] for pool in numpy_blas} == {1}


def test_without_threadpoolctl_auto_keeps_torch_and_numpy_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setattr(LeanDecoder, "_probe_numpy_wins", lambda self: True)
    assert LeanDecoder(llama(), "auto").matmul == "torch"
    with pytest.raises(ValueError, match="needs threadpoolctl"):
        LeanDecoder(llama(), "numpy")


UNSUPPORTED = {  # model -> what the refusal names
    "mistral-window": (lambda: mistral(sliding_window=8), "sliding-window attention"),
    "qwen3-window": (
        lambda: qwen3(use_sliding_window=True, sliding_window=8, max_window_layers=1),
        "sliding-window attention",
    ),
    "dynamic-rope": (
        lambda: llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 5e2}),
        "rope type 'dynamic'",
    ),
    "gelu": (lambda: llama(hidden_act="gelu"), "activation"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_configs_fall_back_to_transformers(name):
    make, reason = UNSUPPORTED[name]
    model = make()
    assert reason in (lean_unsupported(model) or "")
    with pytest.raises(ValueError, match="no lean decode path"):
        LeanDecoder(model)
    loaded = LoadedModel(model=model, tokenizer=None, info=None, devices=("cpu",))
    decoder = open_decoder(loaded)
    assert isinstance(decoder, HFDecoder)
    drafter = LocalDrafter(loaded)
    assert drafter.decode_path == "transformers"
    drafter.begin(CONTEXT[:6], 0.0, 0)
    drafter.commit(0, CONTEXT[6])
    greedy = drafter.propose(3).tokens
    context = CONTEXT[:7]
    for token in greedy:  # the fallback drafts what the model itself would
        assert token == int(torch.argmax(reference_logits(model, context)[-1]))
        context.append(token)


def test_unknown_architecture_is_not_run_lean():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    assert "not a known Llama-style architecture" in lean_unsupported(model.eval())


def test_drafter_proposes_the_same_tokens_on_either_path(loaded_pair):
    _, draft = loaded_pair
    lean, generic = LocalDrafter(draft), LocalDrafter(draft, lean=False)
    assert (lean.decode_path, generic.decode_path) == ("lean", "transformers")
    prompt = [5, 17, 42, 99, 7]
    for drafter in (lean, generic):
        drafter.begin(prompt, 0.0, 0)
        drafter.commit(0, 12)
    for accepted, bonus in ((1, 301), (4, 8), (0, 44)):
        first, second = lean.propose(4), generic.propose(4)
        assert first.tokens == second.tokens
        lean.commit(accepted, bonus)
        generic.commit(accepted, bonus)
        assert lean.cached_tokens == generic.cached_tokens
