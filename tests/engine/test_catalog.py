"""The model catalog reads folders without loading weights and explains bad ones."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from engine import catalog
from engine.catalog import (
    check_same_tokenizer,
    describe_model,
    list_models,
    read_safetensors_header,
    resolve_model,
)
from engine.errors import EngineInputError


def write_safetensors_header(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose header declares these tensors (data zero-filled)."""
    header, offset = {}, 0
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def fake_model(folder: Path, architectures=("LlamaForCausalLM",), dtype="BF16") -> Path:
    folder.mkdir(parents=True)
    config = {"architectures": list(architectures), "model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors_header(
        folder / "model.safetensors",
        {"embed.weight": (dtype, [10, 4]), "norm.weight": ("F32", [4])},
    )
    return folder


def test_describe_reads_config_headers_and_tokenizer(tiny_pair):
    import torch
    from transformers import AutoModelForCausalLM

    target = describe_model(tiny_pair[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0], dtype=torch.float32)
    assert target.architecture == "LlamaForCausalLM"
    assert target.parameters == model.num_parameters()
    assert target.size_bytes == (tiny_pair[0] / "model.safetensors").stat().st_size
    assert target.dtype == "float32"
    assert target.name == "tiny-target" and not target.bundled
    assert len(target.tokenizer_fingerprint) == 16


def test_parameters_and_dtype_come_from_the_header_alone(tmp_path):
    info = describe_model(fake_model(tmp_path / "m"))
    assert info.parameters == 44
    assert info.dtype == "bfloat16"  # the dtype holding most parameters
    assert read_safetensors_header(tmp_path / "m" / "model.safetensors")["norm.weight"][
        "shape"
    ] == [4]


def test_fingerprint_same_for_shared_tokenizer_and_differs_otherwise(
    tiny_pair, other_tokenizer_model
):
    target, draft = (describe_model(f) for f in tiny_pair)
    other = describe_model(other_tokenizer_model)
    assert target.tokenizer_fingerprint == draft.tokenizer_fingerprint
    check_same_tokenizer(target, draft)
    assert other.tokenizer_fingerprint != target.tokenizer_fingerprint
    with pytest.raises(EngineInputError, match="tiny-target.*tiny-other.*different tokenizers"):
        check_same_tokenizer(target, other)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: fake_model(p, architectures=("BertModel",)), "not a causal language model"),
        (lambda p: (fake_model(p), (p / "model.safetensors").unlink()), "no \\*.safetensors"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{oops")), "cannot be read as JSON"),
    ],
)
def test_bad_folders_are_explained(tmp_path, setup, message):
    folder = tmp_path / "model"
    setup(folder)
    with pytest.raises(EngineInputError, match=message):
        resolve_model(str(folder))


def test_corrupt_safetensors_header_is_explained(tmp_path):
    folder = fake_model(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(EngineInputError, match="not a readable safetensors file"):
        describe_model(folder)


def test_list_models_finds_hf_cache_and_extra_dirs(tmp_path, monkeypatch, tiny_pair):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-chat"
    shutil.copytree(tiny_pair[0], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (tmp_path / "hf" / "hub" / "models--acme--bert").mkdir()  # no snapshot: skipped
    extra = tmp_path / "extra"
    fake_model(extra / "mine")
    fake_model(extra / "encoder", architectures=("BertModel",))  # not a causal LM: skipped

    names = [m.name for m in list_models([extra])]
    assert "acme/tiny-chat" in names and "mine" in names
    assert "encoder" not in names and "acme/bert" not in names
    assert resolve_model("acme/tiny-chat").path == (repo / "snapshots" / "abc123").resolve()
    assert resolve_model("mine", [extra]).parameters == 44


def test_unknown_name_points_at_the_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(EngineInputError, match="not in the catalog"):
        resolve_model("acme/nothing-like-this")


def test_demo_pair_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "DEMO_DIR", tmp_path / "demo_models")
    with pytest.raises(EngineInputError, match="bundled demo model pair is missing"):
        catalog.demo_pair()


def test_demo_pair_is_bundled_when_present(tmp_path, monkeypatch, tiny_pair):
    monkeypatch.setattr(catalog, "DEMO_DIR", tmp_path / "demo_models")
    shutil.copytree(tiny_pair[0], tmp_path / "demo_models" / "target")
    shutil.copytree(tiny_pair[1], tmp_path / "demo_models" / "draft")
    target, draft = catalog.demo_pair()
    assert (target.name, draft.name) == ("demo-target", "demo-draft")
    assert target.bundled and draft.bundled


def test_catalog_does_not_import_torch():
    code = "import sys, engine.catalog; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def _info(dtype: str, parameters: int) -> catalog.ModelInfo:
    return catalog.ModelInfo(
        name="m",
        path=Path("/m"),
        architecture="LlamaForCausalLM",
        parameters=parameters,
        size_bytes=parameters * 2,
        dtype=dtype,
        tokenizer_fingerprint=None,
    )


def test_small_half_targets_load_as_float32_everywhere_so_greedy_stays_exact():
    small = _info("bfloat16", 17_000_000)
    assert small.load_dtype(on_cpu=False) == "float32"
    assert small.load_dtype(on_cpu=True) == "float32"
    assert small.resident_bytes(on_cpu=False) == small.size_bytes * 2


def test_a_half_draft_keeps_its_dtype_on_gpus_its_rounding_cannot_change_the_output():
    """Float32 doubles the bytes each draft token reads (a 0.6B draft's step through
    `specdeck run` took 5.8 ms, a bf16 burst 3.5 ms); the target verifies every token."""
    small = _info("bfloat16", 600_000_000)
    assert small.load_dtype(on_cpu=False, draft=True) is None
    assert small.resident_bytes(on_cpu=False, draft=True) == small.size_bytes
    assert small.load_dtype(on_cpu=True, draft=True) == "float32"  # the CPU's half is slow
    assert small.load_dtype(on_cpu=False) == "float32"  # as a target it still widens


def test_large_half_models_keep_their_dtype_on_gpus_but_not_on_the_cpu():
    large = _info("bfloat16", 8_000_000_000)
    assert large.load_dtype(on_cpu=False) is None
    assert large.resident_bytes(on_cpu=False) == large.size_bytes
    assert large.load_dtype(on_cpu=True) == "float32"
    assert _info("float32", 8_000_000_000).load_dtype(on_cpu=True) is None


def test_a_shard_cut_short_after_an_intact_header_is_named(tmp_path):
    folder = fake_model(tmp_path / "m")
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    pattern = rf"{re.escape(str(shard))} is cut short: its header describes \d+ bytes"
    with pytest.raises(EngineInputError, match=pattern):
        describe_model(folder)


def test_a_shard_the_index_names_but_that_is_missing_is_named(tmp_path):
    folder = fake_model(tmp_path / "m")
    index = {"weight_map": {"embed.weight": "model.safetensors", "x": "model-2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineInputError, match=r"model-2.safetensors is missing \(1 of the 2"):
        describe_model(folder)


def pickled_weights(folder: Path, how: str) -> Path:
    """A model folder whose only weights are pytorch_model.bin, saved `how`."""
    import argparse
    import pickle

    import torch

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    file = folder / "pytorch_model.bin"
    weights = {"embed.weight": torch.zeros(10, 4, dtype=torch.bfloat16), "n": torch.ones(4)}
    if how == "state dict":
        torch.save(weights, file)
    elif how == "state dict, legacy format":
        torch.save(weights, file, _use_new_zipfile_serialization=False)
    elif how == "with training arguments":
        torch.save({**weights, "args": argparse.Namespace(lr=0.1)}, file)
    elif how == "plain pickle":
        file.write_bytes(pickle.dumps({"embed.weight": [[0.0] * 4] * 10}, protocol=2))
    elif how == "cut short":
        torch.save(weights, file)
        file.write_bytes(file.read_bytes()[:300])
    return file


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("state dict", None),
        ("state dict, legacy format", None),
        ("with training arguments", "imports argparse.Namespace, which loading with weights_only"),
        ("plain pickle", "is not a torch checkpoint"),
        ("cut short", "is not a readable torch checkpoint"),
    ],
)
def test_pickle_weights_are_judged_as_weights_only_loading_would_without_torch(
    tmp_path, how, message
):
    import torch

    file = pickled_weights(tmp_path / "m", how)
    try:
        torch.load(file, weights_only=True)
        torch_refuses = False
    except Exception:
        torch_refuses = True
    assert torch_refuses == (message is not None)  # the check agrees with torch itself
    if message is None:
        assert describe_model(tmp_path / "m").parameters is None  # no header to count from
    else:
        with pytest.raises(EngineInputError, match=re.escape(str(file)) + ".*" + message):
            describe_model(tmp_path / "m")


def test_the_catalog_shows_folders_that_cannot_load_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    extra = tmp_path / "extra"
    fake_model(extra / "good")
    shard = fake_model(extra / "cut") / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    pickled_weights(extra / "pickled", "with training arguments")
    fake_model(extra / "encoder", architectures=("BertModel",))  # another kind: left out

    models = {m.name: m for m in list_models([extra])}
    assert models["good"].problem is None
    assert f"{shard} is cut short" in models["cut"].problem
    assert "argparse.Namespace" in models["pickled"].problem
    assert models["cut"].size_bytes == shard.stat().st_size
    assert "encoder" not in models
    assert models["cut"].as_json()["problem"] == models["cut"].problem
    with pytest.raises(EngineInputError, match="cut short"):
        resolve_model("cut", [extra])


def test_models_go_by_their_catalog_name_else_by_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    extra = tmp_path / "extra"
    fake_model(extra / "mine")
    fake_model(tmp_path / "elsewhere")
    assert resolve_model("mine", [extra]).name == "mine"
    assert resolve_model(str(extra / "mine"), [extra]).name == "mine"  # a path in the catalog
    assert resolve_model(str(catalog.DEMO_DIR / "target")).name == "demo-target"
    given = str(tmp_path / "elsewhere")
    assert resolve_model(given, [extra]).name == given


def test_the_context_length_comes_from_config_json(tiny_pair, tmp_path):
    assert describe_model(tiny_pair[0]).context_length == 1024
    folder = fake_model(tmp_path / "gpt2")
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "n_positions": 512})
    )
    assert describe_model(folder).context_length == 512
    assert describe_model(fake_model(tmp_path / "none")).context_length is None


def test_prompt_tokens_are_counted_as_the_model_s_tokenizer_does(tiny_pair):
    from transformers import AutoTokenizer

    info = describe_model(tiny_pair[0])
    text = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)"
    expected = len(AutoTokenizer.from_pretrained(tiny_pair[0])(text)["input_ids"])
    assert catalog.count_prompt_tokens(info, text) == expected


def test_a_run_longer_than_a_context_is_refused_with_the_numbers():
    target = replace(_info("float32", 100), name="big", context_length=2048)
    draft = replace(_info("float32", 10), name="small", context_length=1024)
    assert catalog.context_problem(target, draft, 10, 1000, 6) is None
    problem = catalog.context_problem(target, draft, 10, 1010, 6)
    assert problem == (
        "the run needs 1026 positions (10 prompt + 1010 new + k 6) but the draft small has a "
        "context of 1024 tokens; use --max-new-tokens 1008 or less"
    )
    problem = catalog.context_problem(target, draft, 6000, 1, 6)
    assert "6000 prompt" in problem and "the target big has a context of 2048" in problem
    assert "use a shorter prompt" in problem


def test_weight_bytes_are_what_loading_takes_on_those_devices():
    from backends.base import Device

    gpu = Device("cuda:0", "cuda", "H100", index=0)
    sim = Device("sim-cuda:0", "cuda", "H100", index=0, simulated=True)
    cpu = Device("cpu", "cpu", "CPU")
    large = _info("bfloat16", 8_000_000_000)
    assert large.weight_bytes_on([gpu]) == large.weight_bytes_on([sim]) == large.size_bytes
    assert large.weight_bytes_on([cpu]) == large.size_bytes * 2  # float32 on the CPU
    small = _info("bfloat16", 17_000_000)
    assert small.weight_bytes_on([gpu]) == small.size_bytes * 2  # loads as float32 there too
    assert small.weight_bytes_on([gpu], draft=True) == small.size_bytes  # not as a draft
    assert small.weight_bytes_on([cpu], draft=True) == small.size_bytes * 2


def test_the_cli_s_checks_of_a_model_load_neither_torch_nor_transformers(tiny_pair, tmp_path):
    pickled_weights(tmp_path / "pickled", "state dict")  # a pickle checked without torch
    code = (
        "import sys\n"
        "from engine.catalog import check_model_files, count_prompt_tokens, list_models, "
        "resolve_model\n"
        f"info = resolve_model({str(tiny_pair[0])!r})\n"
        "assert count_prompt_tokens(info, 'def f(x):') > 0\n"
        f"check_model_files({str(tmp_path / 'pickled')!r})\n"
        f"list_models([{str(tmp_path)!r}])\n"
        "sys.exit(bool({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
