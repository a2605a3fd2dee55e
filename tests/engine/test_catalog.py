"""The model catalog reads folders without loading weights and explains bad ones."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
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


def test_small_half_models_load_as_float32_everywhere_so_greedy_stays_exact():
    small = _info("bfloat16", 17_000_000)
    assert small.load_dtype(on_cpu=False) == "float32"
    assert small.load_dtype(on_cpu=True) == "float32"
    assert small.resident_bytes(on_cpu=False) == small.size_bytes * 2


def test_large_half_models_keep_their_dtype_on_gpus_but_not_on_the_cpu():
    large = _info("bfloat16", 8_000_000_000)
    assert large.load_dtype(on_cpu=False) is None
    assert large.resident_bytes(on_cpu=False) == large.size_bytes
    assert large.load_dtype(on_cpu=True) == "float32"
    assert _info("float32", 8_000_000_000).load_dtype(on_cpu=True) is None
