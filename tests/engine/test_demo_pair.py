"""The bundled demo pair: loads offline, shares a tokenizer, fits the size cap, writes Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "engine" / "demo_models"
SIZE_CAP_BYTES = 48_000_000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

pytestmark = pytest.mark.skipif(
    not all((DEMO / role / "config.json").exists() for role in ("target", "draft")),
    reason=f"the bundled demo pair is absent ({DEMO}); tools/train_demo_pair.py makes it",
)


@pytest.fixture(scope="module")
def target():
    """The bundled target in float32 with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO / "target", dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(DEMO / "target")


def test_both_models_load_with_auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for role in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(DEMO / role)
        tokenizer = AutoTokenizer.from_pretrained(DEMO / role)
        assert model.config.vocab_size >= len(tokenizer)
        assert tokenizer.eos_token_id is not None


def test_draft_is_much_cheaper_than_target():
    target = json.loads((DEMO / "target" / "config.json").read_text())
    draft = json.loads((DEMO / "draft" / "config.json").read_text())
    assert draft["num_hidden_layers"] * 3 <= target["num_hidden_layers"]
    assert draft["vocab_size"] == target["vocab_size"]


def test_target_and_draft_share_one_tokenizer():
    for name in TOKENIZER_FILES:
        assert (DEMO / "target" / name).read_bytes() == (DEMO / "draft" / name).read_bytes()


def test_pair_fits_the_size_cap():
    size = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert size <= SIZE_CAP_BYTES, f"{size / 1e6:.1f} MB on disk"


def test_weights_are_safetensors_in_small_shards():
    for role in ("target", "draft"):
        weights = list((DEMO / role).glob("*.safetensors"))
        assert weights, role
        assert all(f.stat().st_size < 16 * 2**20 for f in weights)
        assert not list((DEMO / role).glob("*.bin"))


def test_training_record_names_its_corpus():
    record = json.loads((DEMO / "target" / "training.json").read_text())
    assert record["corpus"]["roots"]
    assert len(record["corpus"]["sha256"]) == 64
    assert record["evaluation"]["heldout_loss_target"] > 0


def test_greedy_completion_of_a_python_prompt_is_python(target):
    import torch

    model, tokenizer = target
    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    completion = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert len(completion.strip()) >= 10, repr(completion)
    assert completion.startswith("    "), repr(completion)  # the body, indented
    assert any(word in completion for word in ("return", "if ", "for ", "=")), repr(completion)


@pytest.mark.parametrize("k", [3, 6])
def test_speculative_greedy_on_the_demo_pair_equals_the_target_alone(target, k):
    """The engine's exactness guarantee, on the real trained pair (not random weights)."""
    import torch

    from engine.catalog import demo_pair
    from engine.loading import load_model
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder

    model, tokenizer = target
    target_info, draft_info = demo_pair()
    loaded_target = load_model(target_info, ["cpu"])
    loaded_draft = load_model(draft_info, ["cpu"])
    for prompt in ("import os\n\n\ndef walk(root):\n", "class Stack:\n    def push(self, x):\n"):
        ids = tokenizer.encode(prompt)
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=40,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        expected = out[0, len(ids) :].tolist()
        decoder = SpeculativeDecoder(loaded_target, LocalDrafter(loaded_draft), k, 0.0, 0)
        result = decoder.generate(ids, 40)
        assert result.output_ids == expected[: len(result.output_ids)]
        assert len(result.output_ids) == len(expected)
        assert result.stats.mean_acceptance_length > 1.5  # a trained draft is accepted often


@pytest.mark.slow
def test_the_pair_loads_from_an_installed_wheel(tmp_path):
    """A non-editable install carries the weights as package data and finds them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(root), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("specdeck-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    probe = (
        "import engine.catalog as c; from engine.loading import load_model;"
        "t, d = c.demo_pair(); m = load_model(t, ['cpu']);"
        "print(c.__file__); print(t.path); print(m.model.config.num_hidden_layers)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site)), out
    assert (
        int(out[2])
        == json.loads((DEMO / "target" / "config.json").read_text())["num_hidden_layers"]
    )
