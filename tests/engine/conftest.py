"""Engine fixtures: loaded tiny pairs, a tiny-vocabulary pair, a pair with another tokenizer."""

from __future__ import annotations

import shutil

import pytest

TINY_VOCAB = 24


@pytest.fixture(scope="session")
def loaded_pair(tiny_pair):
    """(target, draft) LoadedModels of the tiny pair on the CPU."""
    from engine.catalog import describe_model
    from engine.loading import load_model

    return tuple(load_model(describe_model(folder), ["cpu"]) for folder in tiny_pair)


@pytest.fixture(scope="session")
def loaded_twin_pair(tiny_twin_pair):
    """(target, draft) LoadedModels where the draft has the target's weights."""
    from engine.catalog import describe_model
    from engine.loading import load_model

    return tuple(load_model(describe_model(folder), ["cpu"]) for folder in tiny_twin_pair)


def tiny_vocab_model(seed: int, hidden: int, layers: int):
    """A LoadedModel over a 24-token vocabulary with peaked, seed-specific distributions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.loading import LoadedModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        initializer_range=0.3,  # large weights: distributions far from uniform
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(model=model, tokenizer=None, info=None, devices=("cpu",))


@pytest.fixture(scope="session")
def tiny_vocab_pair():
    """(target, draft) over a 24-token vocabulary, with clearly different distributions."""
    return tiny_vocab_model(1, 32, 2), tiny_vocab_model(2, 16, 1)


@pytest.fixture(scope="session")
def other_tokenizer_model(tiny_pair, tmp_path_factory):
    """A copy of the tiny draft whose tokenizer was trained differently."""
    from tests.tiny_models import make_tokenizer

    folder = tmp_path_factory.mktemp("other-tok") / "tiny-other"
    shutil.copytree(tiny_pair[1], folder)
    make_tokenizer(folder, vocab_size=300)
    return folder
