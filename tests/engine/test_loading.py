"""Loading models: dtype rules, the layer split map, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from engine.catalog import describe_model
from engine.errors import EngineInputError
from engine.loading import check_torch_devices, layer_split_map, load_model, torch_build_vendor


def llama_skeleton(layers: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def test_loaded_tiny_model_generates_on_cpu(loaded_pair):
    target, _ = loaded_pair
    assert target.devices == ("cpu",)
    assert next(target.model.parameters()).dtype == torch.float32
    assert target.tokenizer.decode(target.tokenizer("def f")["input_ids"]) == "def f"
    assert target.eos_token_ids == frozenset({0})


def test_half_checkpoint_loads_as_float32_on_cpu(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[1]).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_pair[1]).save_pretrained(folder)
    info = describe_model(folder)
    assert info.dtype == "bfloat16"
    loaded = load_model(info, ["cpu"])
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert next(load_model(info, ["cpu"], dtype="bfloat16").model.parameters()).dtype == (
        torch.bfloat16
    )


@pytest.mark.parametrize("tied", [True, False])
def test_layer_split_puts_embeddings_first_and_norm_last(tied):
    model = llama_skeleton(layers=5, tied=tied)
    device_map = layer_split_map(model, ["cuda:0", "cuda:1"])
    assert device_map["model.embed_tokens"] == "cuda:0"
    assert device_map["model.norm"] == "cuda:1"
    assert device_map["model.rotary_emb"] == "cuda:0"  # no weights: stays with the input
    assert device_map["lm_head"] == ("cuda:0" if tied else "cuda:1")
    layers = [device_map[f"model.layers.{i}"] for i in range(5)]
    assert layers == ["cuda:0", "cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    for name, _ in model.named_parameters():
        assert any(name == key or name.startswith(key + ".") for key in device_map), name


def test_layer_split_over_three_devices_is_even_and_ordered():
    device_map = layer_split_map(llama_skeleton(layers=6, tied=False), ["a", "b", "c"])
    assert [device_map[f"model.layers.{i}"] for i in range(6)] == ["a", "a", "b", "b", "c", "c"]


def test_split_map_is_accepted_by_transformers(tiny_pair):
    # two CPU entries stand in for two GPUs: transformers must accept every key of the map
    loaded = load_model(describe_model(tiny_pair[0]), ["cpu", "cpu"])
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        logits, _ = loaded.forward(ids, None)
    assert logits.shape[0] == 3


def test_broken_weights_are_an_input_error(tiny_pair, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_pair[0] / "config.json").read_text())
    header = json.dumps({"lm_head.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    (folder / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header.encode() + b"\0" * 8
    )
    with pytest.raises(EngineInputError, match="cannot load broken"):
        load_model(describe_model(folder), ["cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without GPUs")
def test_gpu_device_without_gpu_torch_is_an_input_error():
    with pytest.raises(EngineInputError, match="cuda"):
        check_torch_devices("cuda", ["cuda:0"])
    check_torch_devices("cuda", ["cpu"])  # the CPU is always reachable
    assert torch_build_vendor() in ("cpu", "cuda", "hip")


def test_weights_damaged_after_the_catalog_read_them_are_named(tiny_pair, tmp_path):
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(tiny_pair[0], folder)
    info = describe_model(folder)
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])  # e.g. a sync that was still going on
    with pytest.raises(EngineInputError, match=f"^{shard} is cut short"):
        load_model(info, ["cpu"])


def test_a_pickle_that_weights_only_loading_refuses_is_an_input_error(tiny_pair, tmp_path):
    import argparse
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_pair[0], folder)
    info = describe_model(folder)
    state = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save({**state, "args": argparse.Namespace(lr=0.1)}, folder / "pytorch_model.bin")
    with pytest.raises(EngineInputError, match="pytorch_model.bin is a pickle that imports"):
        load_model(info, ["cpu"])
