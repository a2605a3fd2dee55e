"""Workloads: `specdeck run` over a prompts file or a suite, in rounds or for a time, through
one daemon session; a row per prompt in the record; progress on a terminal and in the
dashboard; bad values refused in one line."""

from __future__ import annotations

import gc
import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUN_S = 300  # a workload of the tiny pair on a loaded 2-core box, daemons' start included


def pair_args(pair) -> list[str]:
    return ["--target-model", str(pair[0]), "--draft-model", str(pair[1])]


def generation_documents_alive() -> int:
    """Generation documents anywhere in this process (a daemon's `done` result, decoded)."""
    return sum(
        1
        for o in gc.get_objects()
        if type(o) is dict and "output_token_ids" in o and "k_history" in o
    )


def record_rows(run_id: str, name: str) -> list[dict]:
    from app.config import data_dir

    text = (data_dir() / "runs" / run_id / name).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_prompts_file_goes_round_in_one_session_with_a_row_per_prompt(
    tiny_pair, tmp_path, capsys, monkeypatch
):
    from app.commands import run as run_command

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\n\nclass Point:\n")
    held: list[int] = []
    shown = run_command.RunProgress.prompt_done

    def counting(progress, event):  # on the run's thread, as each prompt ends
        held.append(generation_documents_alive())
        shown(progress, event)

    monkeypatch.setattr(run_command.RunProgress, "prompt_done", counting)
    code = main(["run", *pair_args(tiny_pair), "--target", "cpu", "--prompts-file",
                 str(prompts), "--repeat", "2", "--max-new-tokens", "4", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert (result["prompt_count"], result["rounds"], result["stop_reason"]) == (
        4, 2, "max_new_tokens",
    )  # fmt: skip
    assert result["workload"] == {
        "prompts": 2, "source": str(prompts), "repeat": 2, "duration_s": None,
    }  # fmt: skip

    rows = record_rows(result["run_id"], "prompts.jsonl")
    assert [(r["index"], r["round"], r["prompt_id"]) for r in rows] == [
        (0, 0, "line 1"), (1, 0, "line 3"), (2, 1, "line 1"), (3, 1, "line 3"),
    ]  # fmt: skip
    assert rows[1]["prompt"] == "class Point:" and "prompt" not in rows[3]  # named, not repeated
    assert rows[2]["output_token_ids"] == rows[0]["output_token_ids"]  # greedy, same prompt
    steps = record_rows(result["run_id"], "steps.jsonl")
    assert sum(r["steps"] for r in rows) == result["steps"] == len(steps)
    assert sum(r["new_tokens"] for r in rows) == result["new_tokens"] == 16
    committed = sum(r["committed"] for r in rows)
    assert result["mean_acceptance_length"] == pytest.approx(committed / result["steps"])

    # the runner keeps running totals: each prompt's document is let go once it is recorded
    assert len(held) == 4 and held[-1] <= held[0], held
    # no terminal: a plain line as the first prompt ends and as the last does
    lines = err.splitlines()
    assert re.fullmatch(r"specdeck: prompt 1 of 4 done: 4 tokens, AL .*; ETA \d+:\d\d", lines[0])
    assert lines[-1].startswith("specdeck: prompt 4 of 4 done: ") and lines[-1].endswith("0:00")

    assert main(["runs", "show", result["run_id"][:20]]) == 0
    shown_run = capsys.readouterr().out
    assert re.search(r"^prompts +4 \(one row each below\)$", shown_run, re.M)
    assert re.search(r"^3 +1 +line 3 +4 +\d+ ", shown_run, re.M)  # index, round, id, tokens


def test_a_time_bound_ends_the_run_by_itself_with_a_bar_on_the_terminal(tiny_pair, tmp_path):
    """JSON Lines prompts, --duration: the bar on a terminal's stderr, the document on stdout."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "add", "prompt": "def add(a, b):\n    return"}, {"prompt": "class Point:"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [sys.executable, "-m", "app.cli", "run", *pair_args(tiny_pair), "--target", "cpu",
            "--prompts-file", str(prompts), "--duration", "1s", "--max-new-tokens", "4",
            "--json"]  # fmt: skip
    terminal, stderr = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30"}
    run = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
    )
    os.close(stderr)
    screen = bytearray()

    def read_terminal() -> None:  # drained as it comes, so that the run never blocks on it
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the run has ended and closed it
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        out, _ = run.communicate(timeout=RUN_S)
    finally:
        run.kill()
        reader.join(10)
        os.close(terminal)
    assert run.returncode == 0, screen.decode(errors="replace")[-2000:]
    result = json.loads(out)
    assert result["stop_reason"] == "duration" and result["workload_s"] >= 1.0
    assert result["workload"]["duration_s"] == 1.0 and result["workload"]["repeat"] is None
    recorded = record_rows(result["run_id"], "prompts.jsonl")
    assert len(recorded) == result["prompt_count"] >= 1
    ids = ["add", "line 2"] * len(recorded)
    assert [r["prompt_id"] for r in recorded] == ids[: len(recorded)]
    text = screen.decode(errors="replace")
    assert "prompt 1" in text and "ETA" in text and "tokens" in text  # the two bars drawn


async def test_the_dashboard_s_gauge_follows_a_workload_prompt_by_prompt(
    tiny_pair, tmp_path, monkeypatch
):
    from textual.widgets import Input, ProgressBar, Select

    from app.widgets.workload import WorkloadGauge
    from engine.catalog import describe_model
    from tests.app.dashboard_fakes import make_app, wait_filled, wait_for

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\nclass Point:\n")
    seen = []
    show = WorkloadGauge.show
    monkeypatch.setattr(
        WorkloadGauge,
        "show",
        lambda gauge, progress: (seen.append(progress), show(gauge, progress)),
    )
    app = make_app(models=tuple(describe_model(folder) for folder in tiny_pair))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        await wait_filled(pilot)
        gauge = screen.query_one(WorkloadGauge)
        assert not gauge.display  # no workload yet
        screen.query_one("#source", Select).value = "file"
        await wait_for(pilot, lambda: not screen.query_one("#prompts-file").disabled, "file")
        screen.query_one("#prompts-file", Input).value = str(prompts)
        screen.query_one("#repeat", Input).value = "2"
        screen.query_one("#max-new-tokens", Input).value = "4"
        await pilot.press("t", "c", "enter", "d", "enter", "l")  # both on the CPU
        await wait_for(pilot, lambda: screen.live_run.handle is not None, "the launch")
        await wait_for(pilot, lambda: gauge.display, "the gauge")
        await wait_for(pilot, lambda: not screen.live_run.busy, "the run's end", RUN_S)
        assert screen.live_run.outcome == "done", [n.message for n in app._notifications]
        assert [p.done for p in seen if p is not None] == [0, 1, 2, 3, 4]
        assert [p.total for p in seen if p is not None] == [4] * 5
        assert gauge.query_one(ProgressBar).percentage == 1.0
        label = str(gauge.query_one(".gauge-label").render())
        assert label == "prompt 4 of 4 · 4 done, ETA 0:00"
        assert screen.query_one("#output").text  # the last prompt's output
        said = [e.text for e in screen.event_log.entries if e.text.startswith("prompt ")]
        assert [line.split(":")[0] for line in said] == [
            f"prompt {i} of 4 done" for i in (1, 2, 3, 4)
        ]


def test_progress_reads_the_same_in_the_bar_the_gauge_and_the_log():
    from app.progress import WorkloadProgress, time_text
    from ipc.events import PromptEvent
    from ipc.run_spec import Workload

    assert [time_text(s) for s in (None, 0.4, 75, 3725)] == ["-", "0:00", "1:15", "1:02:05"]
    start = WorkloadProgress.starting(Workload(prompts=("a", "b"), repeat=5))
    assert (start.label, start.detail) == ("prompt 1 of 10", "0 done, ETA -")
    timed = WorkloadProgress.starting(Workload(prompts=("a",), duration_s=90.0))
    assert (timed.label, timed.detail) == ("prompt 1", "0 done, ETA 1:30")
    result = {"new_tokens": 40, "mean_acceptance_length": 2.3125, "decode_tokens_per_s": 120.54}
    after = WorkloadProgress.of(PromptEvent(2, 10, result, 30.0, 0.3, 70.0))
    assert (after.label, after.finished) == ("prompt 4 of 10", False)
    assert after.line(result) == "prompt 3 of 10 done: 40 tokens, AL 2.31, 120.5 tok/s; ETA 1:10"
    last = WorkloadProgress.of(PromptEvent(9, 10, {"new_tokens": 1}, 99.0, 1.0, 0.0))
    assert (last.label, last.finished, last.line({"new_tokens": 1})) == (
        "prompt 10 of 10", True, "prompt 10 of 10 done: 1 token; ETA 0:00",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suite", "humaneval", "--n", "0"], "--n must be at least 1, not 0"),
        (["--suite", "humaneval", "--n", "999"], "--n 999: humaneval has 164 prompts"),
        (["--suite", "nosuch"], r"unknown suite 'nosuch' \(known: humaneval\)"),
        (["--duration", "x"], "--duration must be a time such as 90s, 30m, 2h or 1h30m, not 'x'"),
        (["--duration", "0s"], "--duration must be more than 0 and at most 7 days"),
        (["--repeat", "0"], "--repeat must be from 1 to 1000000, not 0"),
        (["--repeat", "x"], "argument --repeat: invalid int value: 'x'"),
        (["--prompts-file", "/nonexistent/p.txt"], "cannot read --prompts-file /nonexistent/p"),
        (["--n", "2"], "--n takes the first N of --suite or --prompts-file"),
        (["--prompt", "x", "--suite", "humaneval"], "give --prompt or --suite, not both"),
    ],
)
def test_bad_workload_values_are_one_line_and_exit_2(tiny_pair, capsys, argv, message):
    code = main(["run", *pair_args(tiny_pair), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("specdeck: ") and re.search(message, err), err


def test_a_bad_line_in_a_prompts_file_is_named_before_anything_starts(tiny_pair, tmp_path, capsys):
    from app.config import data_dir

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "def f(x):"}\n{"prompt": 3}\n')
    too_long = tmp_path / "long.txt"
    too_long.write_text("def f(x):\n" + "x = 1; " * 700 + "\n")  # past the 1024-token context
    for path, sentence in (
        (jsonl, f'--prompts-file {jsonl} line 2 has no "prompt" text'),
        (too_long, r"prompt 2 of 2 \(line 2\): the run needs \d+ positions"),
    ):
        code = main(["run", *pair_args(tiny_pair), "--prompts-file", str(path)])
        out, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and re.search(sentence, err), err
    assert not (data_dir() / "runs").exists() or not list((data_dir() / "runs").iterdir())
