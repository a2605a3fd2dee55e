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
from ipc import run_spec as run_options

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
    assert result["target_model"] == str(tiny_pair[0])  # not in the catalog: the path as given


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
        (["--max-new-tokens", "0"], "--max-new-tokens must be from 1 to 1000000, not 0"),
        (["--max-new-tokens", "100000000"], "--max-new-tokens must be from 1 to 1000000"),
        (["--seed", str(2**70)], "--seed must be from 0 to 2\\*\\*64-1"),
        (["--seed", "-1"], "--seed must be from 0"),
        (["--prompt-file", "/dev/zero"], "--prompt-file /dev/zero is larger than 4 MiB"),
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


def test_a_run_past_a_model_s_context_is_refused_with_the_numbers(tiny_pair, capsys):
    # the tiny pair's context is 1024 tokens
    code, out, err = run_cli(capsys, *pair_args(tiny_pair), "--max-new-tokens", "2500")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.search(r"the run needs 25\d\d positions \(\d+ prompt \+ 2500 new \+ k 6\)", err)
    assert "the target " in err and "has a context of 1024 tokens" in err
    assert re.search(r"use --max-new-tokens 10\d\d or less", err)
    code, _, err = run_cli(capsys, *pair_args(tiny_pair), "--prompt", "x = 1\n" * 600)
    assert code == 2 and "prompt" in err and "use a shorter prompt" in err
    code, _, err = run_cli(capsys, *pair_args(tiny_pair), "--max-new-tokens", "1000", "--k", "auto")
    assert code == 2 and "+ k 16)" in err  # auto drafts up to 16 tokens a step


INPROCESS = ["--target", "cpu"]
SPLIT = ["--simulate", "cuda:2", "--target", "sim-cuda:0", "--draft", "sim-cuda:1"]
BOTH_MODES = [INPROCESS, SPLIT]


def damaged_copy(tiny_pair, root: Path, how: str) -> tuple[Path, Path]:
    """(folder, damaged file): the tiny target, its weights cut short or pickled with extras."""
    folder = root / f"damaged-{how}"
    shutil.copytree(tiny_pair[0], folder)
    shard = folder / "model.safetensors"
    if how == "cut":
        shard.write_bytes(shard.read_bytes()[:-4096])
        return folder, shard
    import argparse

    import torch
    from safetensors.torch import load_file

    state = load_file(shard)
    shard.unlink()
    torch.save({**state, "args": argparse.Namespace(lr=0.1)}, folder / "pytorch_model.bin")
    return folder, folder / "pytorch_model.bin"


@pytest.mark.parametrize("how", ["cut", "pickled"])
@pytest.mark.parametrize("placement", BOTH_MODES, ids=["inprocess", "split"])
def test_damaged_weights_are_one_line_naming_the_file_in_both_modes(
    tiny_pair, tmp_path, capsys, how, placement
):
    folder, damaged = damaged_copy(tiny_pair, tmp_path, how)
    argv = ["--target-model", str(folder), "--draft-model", str(tiny_pair[1]), *placement]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"specdeck: {damaged} ")


def remote_code_copy(tiny_pair, root: Path) -> Path:
    """The tiny target, dressed as a model whose architecture lives in its own code."""
    folder = root / "custom"
    shutil.copytree(tiny_pair[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="specdeck-custom",
        architectures=["CustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("placement", BOTH_MODES, ids=["inprocess", "split"])
def test_a_model_that_needs_its_own_code_is_refused_with_status_2_in_both_modes(
    tiny_pair, tmp_path, capsys, placement
):
    folder = remote_code_copy(tiny_pair, tmp_path)
    argv = ["--target-model", str(folder), "--draft-model", str(tiny_pair[1]), *placement]
    code, out, err = run_cli(capsys, *argv, "--max-new-tokens", "4")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot load {folder}: " in err and "custom code" in err
    assert "allow it with --trust-remote-code" in err


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("/nonexistent/python", "does not exist"),
        ("/bin/false", "cannot run a specdeck daemon (exit status 1)"),
        ("/", "is not an executable file"),
    ],
)
def test_a_configured_interpreter_that_cannot_start_a_daemon_is_named(
    tiny_pair, tmp_path, capsys, python, message
):
    config = tmp_path / "config.toml"
    config.write_text(f'[backends.cpu]\npython = "{python}"\n')
    code, out, err = run_cli(capsys, *pair_args(tiny_pair), "--config", str(config), *SPLIT)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"config file {config}: [backends.cpu] python = '{python}' {message}" in err


def test_a_simulated_device_without_simulate_points_at_the_option(tiny_pair, capsys):
    code, _, err = run_cli(capsys, *pair_args(tiny_pair), "--target", "sim-cuda:0")
    assert code == 2 and err.count("\n") == 1
    assert "no device 'sim-cuda:0' (known: cpu)" in err
    assert "simulated devices come from --simulate, e.g. --simulate cuda:2" in err


def test_demo_models_go_by_their_catalog_names_in_both_modes(capsys):
    from app.config import data_dir
    from ipc.records import list_runs

    given = ["--target-model", str(ROOT / "engine" / "demo_models" / "target")]  # a path
    for placement in BOTH_MODES:
        code, out, _ = run_cli(capsys, *given, *placement, "--max-new-tokens", "4", "--json")
        assert code == 0
        result = json.loads(out)
        assert (result["target_model"], result["draft_model"]) == ("demo-target", "demo-draft")
    runs = list_runs(data_dir())
    assert [(r.target_model, r.draft_model, r.mode) for r in runs] == [
        ("demo-target", "demo-draft", "split"),
        ("demo-target", "demo-draft", "inprocess"),
    ]


def sparse_model(root: Path, tokenizer_from: Path, gib: int) -> Path:
    """A bfloat16 model folder of `gib` GiB of weights, in a sparse file (no disk used)."""
    import struct

    folder = root / f"big-{gib}g"
    folder.mkdir()
    shutil.copy(tokenizer_from / "tokenizer.json", folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    data = gib * 2**30
    header = json.dumps(
        {"w": {"dtype": "BF16", "shape": [data // 2], "data_offsets": [0, data]}}
    ).encode()
    with (folder / "model.safetensors").open("wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + data)
    return folder


async def test_the_dashboard_and_the_cli_judge_a_fit_by_one_estimate(tiny_pair, tmp_path, capsys):
    from engine.catalog import describe_model
    from tests.app.dashboard_fakes import make_app, wait_for

    big = sparse_model(tmp_path, tiny_pair[0], 100)
    needs = re.compile(r"needs about (\d+\.\d) GiB")
    cli_needs = {}
    for card, placement in (("sim-cuda:0", SPLIT), ("cpu", ["--target", "cpu"])):
        argv = ["--target-model", str(big), "--draft-model", str(tiny_pair[1]), *placement]
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and needs.search(err), err
        cli_needs[card] = needs.search(err).group(1)
    # a simulated GPU is judged as the GPU it stands for; on the CPU bfloat16 loads as float32
    assert cli_needs == {"sim-cuda:0": "120.0", "cpu": "240.0"}

    app = make_app(models=(describe_model(big), describe_model(tiny_pair[1])))
    async with app.run_test() as pilot:
        board = lambda: app.screen.board  # noqa: E731
        await wait_for(pilot, lambda: board().target_bytes, "the chosen models' sizes")
        dashboard_needs = {
            card: needs.search(board().why_not("target", card) or "").group(1) for card in cli_needs
        }
    assert dashboard_needs == cli_needs


async def test_the_dashboard_starts_from_the_cli_s_defaults_and_makes_its_context_check(
    tiny_pair,
):
    from textual.widgets import Input

    from app.cli import build_parser
    from engine.catalog import describe_model
    from tests.app.dashboard_fakes import make_app, wait_filled, wait_for

    defaults = build_parser().parse_args(["run"])
    app = make_app(models=tuple(describe_model(f) for f in tiny_pair))  # 1024-token context
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_filled(pilot)
        shown = {w: app.screen.query_one(f"#{w}", Input).value for w in
                 ("prompt", "k", "temperature", "max-new-tokens")}  # fmt: skip
        assert shown == {
            "prompt": run_options.DEFAULT_PROMPT,
            "k": defaults.k,
            "temperature": str(defaults.temperature),
            "max-new-tokens": str(defaults.max_new_tokens),
        }
        app.screen.query_one("#max-new-tokens", Input).value = "2500"
        await pilot.press("t", "c", "right", "enter", "d", "enter")  # both on sim-cuda:0
        await wait_for(pilot, lambda: app.screen.board.draft, "the draft placed")
        await pilot.press("l")
        await wait_for(
            pilot, lambda: any(n.title == "cannot launch" for n in app._notifications), "refusal"
        )
        refusal = next(n.message for n in app._notifications if n.title == "cannot launch")
        assert "+ 2500 new + k 6)" in refusal and "a context of 1024 tokens" in refusal
        assert "use max new tokens " in refusal and not app.screen.live_run.busy
    assert run_options.DEFAULT_PROMPT == "def fibonacci(n):" and defaults.prompt is None


RUNS_WITHOUT_TORCH = """
import sys
from app.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("loaded:", ",".join(loaded) or "none", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("mode", ["inprocess", "split"])
def test_a_whole_run_leaves_torch_to_the_daemons(tiny_pair, mode):
    argv = [
        sys.executable, "-c", RUNS_WITHOUT_TORCH, "run", *pair_args(tiny_pair), "--target", "cpu",
        "--mode", mode, "--max-new-tokens", "4", "--baseline", "--json",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mode"] == mode
    assert done.stderr.strip().splitlines()[-1] == "loaded: none"
