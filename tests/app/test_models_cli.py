"""`specdeck models`: the catalog as a table or as JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


def cut_short_model(tiny_pair, root: Path) -> Path:
    """A copy of the tiny draft whose weights were cut short after an intact header."""
    folder = root / "cut-draft"
    shutil.copytree(tiny_pair[1], folder)
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4096])
    return folder


def test_models_lists_a_folder_that_cannot_load_as_broken_with_the_reason(
    tiny_pair, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    broken = cut_short_model(tiny_pair, tmp_path / "extra")
    shutil.copytree(tiny_pair[0], tmp_path / "extra" / "tiny-target")
    assert main(["--models-dir", str(tmp_path / "extra"), "models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["tiny-target"]["problem"] is None
    assert models["cut-draft"]["problem"].startswith(f"{broken / 'model.safetensors'} is cut short")
    assert main(["--models-dir", str(tmp_path / "extra"), "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("cut-draft"))
    assert lines[row].split()[1] == "BROKEN"
    assert lines[row + 1].strip().startswith(f"cannot load: {broken / 'model.safetensors'}")


async def test_the_dashboard_s_pickers_show_a_broken_folder_and_launch_refuses_it(
    tiny_pair, tmp_path
):
    from textual.widgets import OptionList, Select

    from app.widgets.models import ModelsPanel
    from engine.catalog import list_models
    from tests.app.dashboard_fakes import make_app, wait_filled, wait_for

    cut_short_model(tiny_pair, tmp_path / "extra")
    shutil.copytree(tiny_pair[0], tmp_path / "extra" / "tiny-target")
    models = [m for m in list_models([tmp_path / "extra"]) if not m.bundled]
    broken = next(i for i, m in enumerate(models) if m.problem)
    app = make_app(models=models)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_filled(pilot)
        panel = app.screen.query_one(ModelsPanel)
        await wait_for(pilot, lambda: panel.target is not None, "the default choice")
        assert panel.target.problem is None and panel.draft.problem is None  # never preselected
        picker = app.screen.query_one("#pick-draft", Select)
        shown = picker.query_one(OptionList)  # the picker's drop-down list
        labels = [str(shown.get_option_at_index(i).prompt) for i in range(shown.option_count)]
        assert "cut-draft (broken)" in labels
        picker.value = broken
        await wait_for(pilot, lambda: panel.draft is models[broken], "the broken draft chosen")
        facts = str(panel.query_one("#facts-draft").render())
        assert facts.startswith("broken: ") and "is cut short" in facts
        await pilot.press("escape", "t", "c", "enter", "d", "enter", "l")  # both on the CPU
        await wait_for(pilot, lambda: app._notifications, "the launch refused")
        (note,) = app._notifications
        assert note.title == "cannot launch" and "is cut short" in note.message
        assert f"{tmp_path / 'extra' / 'cut-draft'}" in note.message
        assert not app.screen.live_run.busy
