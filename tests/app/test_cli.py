"""The command line's shared behaviour: one line and exit status 2 for bad input."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main


@pytest.mark.parametrize("command", [["devices"], ["runs"], ["models"]])
def test_a_named_config_that_is_missing_or_malformed_is_refused_by_every_command(
    command, tmp_path, capsys
):
    assert main(["--config", str(tmp_path / "absent.toml"), *command]) == 2
    assert capsys.readouterr().err.strip() == (
        f"specdeck: config file {tmp_path / 'absent.toml'} does not exist"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[backends.tpu]\npython = 'x'\n")
    assert main([*command, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backend [backends.tpu]" in err


ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str, stdout: int | None = None) -> subprocess.CompletedProcess[str]:
    """`specdeck ARGV` in its own process (stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["run", "--seed", "abc"], "argument --seed: invalid int value: 'abc'", "specdeck run"),
        (["runs", "list"], "invalid choice: 'list'", "specdeck runs"),
        (["devices", "--watch", "often"], "invalid float value: 'often'", "specdeck devices"),
        (["--nosuch"], "unrecognized arguments: --nosuch", "specdeck"),
    ],
)
def test_usage_errors_are_one_line_with_a_pointer_to_help(argv, message, hint, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("specdeck: ") and message in err
    assert f"(see `{hint} --help`)" in err


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"specdeck {version('specdeck')}\n"


def test_top_level_help_is_for_users_and_hides_the_daemon(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "opens the dashboard" in out and "examples:" in out
    for command in ("devices", "models", "run", "bench", "runs"):
        assert f"\n    {command} " in out
    assert "daemon" not in out and "supervisor" not in out


def test_run_help_explains_the_options_and_their_defaults(capsys):
    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--json print one JSON document" in out
    assert "(default: 128)" in out  # --max-new-tokens
    assert "0 is greedy" in out and "(default: 0.0)" in out  # --temperature
    assert "random seed for sampling, 0 to 2**64-1 (default: 0)" in out
    assert "(default: 6)" in out and "(default: 'def fibonacci(n):')" in out


def test_a_closed_pipe_ends_quietly():
    from app.config import data_dir
    from ipc.records import RunRecorder

    for _ in range(3):
        RunRecorder(
            data_dir(), target_model="t", draft_model="d",
            placement={"target": ["cpu"], "draft": "cpu"}, mode="inprocess", options={},
        ).finish({})  # fmt: skip
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` does once it has its lines
    try:
        done = cli("runs", stdout=write_end)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141


def test_daemon_with_a_missing_spec_is_one_line(tmp_path):
    done = cli("daemon", "--role", "draft", "--spec", str(tmp_path / "nonexistent.json"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "cannot read the launch spec" in done.stderr and "nonexistent.json" in done.stderr


def test_models_dir_works_after_the_command_too(tiny_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["models", "--json", "--models-dir", str(tiny_pair[0])]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert "tiny-target" in names and "tiny-draft" not in names
    argv = ["--models-dir", str(tiny_pair[0]), "models", "--models-dir", str(tiny_pair[1])]
    assert main([*argv, "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert "tiny-target" in names and "tiny-draft" in names  # both places count


def test_an_unknown_theme_with_a_command_is_named_not_ignored(capsys):
    assert main(["runs", "--theme", "nosuch"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "warning: --theme: unknown theme 'nosuch'" in err and "specdeck-dark" in err
    assert main(["runs", "--theme", "specdeck-light"]) == 0
    assert capsys.readouterr().err == ""


def test_an_unknown_theme_in_the_config_is_named_before_the_dashboard_starts(tmp_path, capsys):
    from app.cli import warn_about_theme

    config = tmp_path / "config.toml"
    config.write_text('theme = "nosuch"\n')
    args = argparse.Namespace(theme=None, config=str(config))
    warn_about_theme(args, "dashboard")
    err = capsys.readouterr().err
    assert f"warning: config file {config}: unknown theme 'nosuch'" in err
    assert "using the default theme" in err
    config.write_text('theme = "specdeck-light"\n')
    warn_about_theme(args, "dashboard")
    assert capsys.readouterr().err == ""
