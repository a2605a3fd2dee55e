"""`specdeck models`: the catalog as a table or as JSON."""

from __future__ import annotations

import json
import shutil

from app.cli import main

MODEL_KEYS = {
    "name", "path", "architecture", "parameters", "size_bytes", "dtype",
    "tokenizer_fingerprint", "bundled",
}  # fmt: skip


def test_models_json_lists_extra_dirs_and_the_hf_cache(tiny_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_pair[0], snapshot)

    assert main(["--models-dir", str(tiny_pair[0].parent), "models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert {"acme/tiny", "tiny-target", "tiny-draft"} <= models.keys()
    for entry in models.values():
        assert set(entry) >= MODEL_KEYS  # stable keys; more may be added
    target = models["tiny-target"]
    assert target["architecture"] == "LlamaForCausalLM" and target["bundled"] is False
    assert target["parameters"] > models["tiny-draft"]["parameters"] > 0
    assert target["tokenizer_fingerprint"] == models["tiny-draft"]["tokenizer_fingerprint"]


def test_models_table_is_readable(tiny_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["--models-dir", str(tiny_pair[0].parent), "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "ARCHITECTURE", "PARAMS"]
    assert any(line.startswith("tiny-target") and "99.7K" in line for line in lines)


def test_models_from_the_config_file(tiny_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ndirs = ["{tiny_pair[1]}"]\n')
    assert main(["--config", str(config), "models", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert "tiny-draft" in names
