"""`specdeck run`: a JSON document with every contract key, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUN_KEYS = {
    "target_model", "draft_model", "placement", "mode", "k", "temperature", "seed",
    "prompt_tokens", "new_tokens", "steps", "mean_acceptance_length", "acceptance_rate",
    "per_position_acceptance", "decode_tokens_per_s", "prefill_s", "wall_s",
    "output_token_ids", "output_text", "baseline", "speedup", "run_id",
}  # fmt: skip


def pair_args(pair) -> list[str]:
    return ["--target-model", str(pair[0]), "--draft-model", str(pair[1])]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_run_on_the_cpu_has_every_key(tiny_pair, capsys):
    code, out, _ = run_cli(
        capsys, *pair_args(tiny_pair), "--target", "cpu", "--prompt", "def f(x):",
        "--max-new-tokens", "12", "--k", "3", "--baseline", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result.keys() >= RUN_KEYS
    assert result["placement"] == {"target": ["cpu"], "draft": "cpu"}
    assert result["mode"] == "inprocess" and result["k"] == 3
    assert result["new_tokens"] == len(result["output_token_ids"]) == 12
    assert isinstance(result["mean_acceptance_length"], float)
    assert 1.0 <= result["mean_acceptance_length"] <= 4.0
    assert result["baseline"]["output_token_ids"] == result["output_token_ids"]  # greedy
    assert result["speedup"] > 0
    assert result["target_model"] == "tiny-target"


def test_summary_lists_the_metrics(tiny_pair, capsys):
    code, out, _ = run_cli(
        capsys, *pair_args(tiny_pair), "--simulate", "cuda:1", "--target", "sim-cuda:0",
        "--draft", "sim-cuda:0", "--max-new-tokens", "8", "--k", "auto",
    )  # fmt: skip
    assert code == 0
    for label in ("steps", "mean acceptance length", "acceptance rate",
                  "per-position acceptance", "decode", "prefill"):  # fmt: skip
        assert label in out
    assert "sim-cuda:0 (simulated)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k", "0"], "--k must be a whole number"),
        (["--k", "abc"], "--k must be a whole number"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--temperature", "-1"], "--temperature must be"),
        (["--target", "cuda:7"], "no device 'cuda:7'"),
        (["--draft", "cpu,cpu"], "the draft goes on one device"),
        (
            [
                "--simulate",
                "cuda:1,hip:1",
                "--target",
                "sim-cuda:0,sim-hip:0",
                "--draft",
                "sim-cuda:0",
            ],
            "cannot be split across vendors",
        ),  # fmt: skip
        (["--prompt-file", "/nonexistent/prompt.txt"], "cannot read --prompt-file"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tiny_pair, capsys, argv, message):
    code, out, err = run_cli(capsys, *pair_args(tiny_pair), *argv)
    assert code == 2 and out == ""
    assert err.startswith("specdeck: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_bad_models_are_one_line_and_exit_2(tiny_pair, tmp_path, capsys):
    from tests.tiny_models import make_tokenizer

    not_lm = tmp_path / "encoder"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    other_tok = tmp_path / "other-tok"
    shutil.copytree(tiny_pair[1], other_tok)
    make_tokenizer(other_tok, vocab_size=300)
    cases = [
        (["--target-model", str(tmp_path / "nope"), "--draft-model", str(tiny_pair[1])],
         "does not exist"),
        (["--target-model", str(tiny_pair[0]), "--draft-model", str(not_lm)],
         "not a causal language model"),
        (["--target-model", str(tiny_pair[0]), "--draft-model", str(other_tok)],
         "tiny-target .*other-tok .*different tokenizers"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert re.search(message, err), err


def test_missing_bundled_pair_is_explained(tmp_path, monkeypatch, capsys):
    from engine import catalog

    monkeypatch.setattr(catalog, "DEMO_DIR", tmp_path / "demo_models")
    code, _, err = run_cli(capsys)
    assert code == 2 and "bundled demo model pair is missing" in err


def test_run_in_a_real_process(tiny_pair):
    argv = [sys.executable, "-m", "app.cli", "run", *pair_args(tiny_pair), "--prompt", "x = 1",
            "--max-new-tokens", "6", "--json"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result.keys() >= RUN_KEYS and isinstance(result["mean_acceptance_length"], float)
    assert done.stderr == ""  # no progress bars or warnings without a terminal


def test_importing_the_run_command_loads_no_torch():
    code = (
        "import sys, app, app.commands.run, app.commands.models; "
        "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
