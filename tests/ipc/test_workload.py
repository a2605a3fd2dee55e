"""A run's workload, as plain values: its bounds, its progress, its prompts file, its record."""

from __future__ import annotations

import gc
import json

import pytest

from engine.errors import EngineInputError
from engine.metrics import PooledFigures, pooled_figures
from ipc.records import RunRecorder, load_run
from ipc.run_spec import (
    DURATION_LIMIT_S,
    RunSpec,
    Workload,
    check_workload,
    parse_duration,
    read_prompts_file,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5d", 129600), (45, 45)],
)
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["x", "", "10", "2 hours", "1h-5m", "0s", "8d", "s"])
def test_a_duration_that_is_no_time_or_out_of_bounds_is_one_sentence(text):
    with pytest.raises(EngineInputError, match=r"^--duration must be") as refused:
        parse_duration(text)
    assert "\n" not in str(refused.value)
    assert parse_duration(f"{DURATION_LIMIT_S:g}s") == DURATION_LIMIT_S


def test_the_check_cuts_to_n_and_bounds_repeat_with_the_caller_s_names():
    spec = RunSpec(prompts=("a", "b", "c"), prompt_ids=("x", "y", "z"), prompt_source="f.txt")
    work = check_workload(RunSpec(**{**spec.__dict__, "n": 2, "repeat": 3, "duration": "1m"}))
    assert (work.prompts, work.ids, work.repeat, work.duration_s) == (("a", "b"), ("x", "y"), 3, 60)
    refusals = [
        ({"n": 0}, "--n must be at least 1, not 0"),
        ({"n": 4}, "--n 4: f.txt has 3 prompts"),
        ({"repeat": 0}, "--repeat must be from 1 to 1000000, not 0"),
        ({"duration": "soon"}, "--duration must be a time such as 90s"),
    ]
    for change, sentence in refusals:
        with pytest.raises(EngineInputError, match=sentence.replace("(", r"\(")):
            check_workload(RunSpec(**{**spec.__dict__, **change}))
    with pytest.raises(EngineInputError, match="^the time bound must be"):
        check_workload(RunSpec(duration="x"), {"duration": "the time bound"})


def test_rounds_and_a_time_bound_say_what_comes_next_and_how_far_along():
    rounds = Workload(prompts=("a", "b"), repeat=3)
    assert rounds.several and rounds.total == 6
    assert [rounds.prompt_at(i)[1] for i in range(5)] == ["a", "b", "a", "b", "a"]
    assert rounds.more(5, 1e9) and not rounds.more(6, 0.0)  # a count bound ignores the clock
    assert rounds.progress(0, 0.0) == (0.0, None)  # no rate yet: no ETA
    assert rounds.progress(2, 10.0) == (pytest.approx(1 / 3), pytest.approx(20.0))

    timed = Workload(prompts=("a",), duration_s=60.0)
    assert timed.several and timed.total is None  # only the clock ends it
    assert timed.more(1000, 59.9) and not timed.more(1, 60.0)
    assert timed.progress(3, 15.0) == (0.25, 45.0)

    both = Workload(prompts=("a",), repeat=10, duration_s=100.0)
    assert both.progress(5, 10.0) == (0.5, 10.0)  # the nearer bound: 5 more at 2 s each
    assert not both.more(10, 1.0) and not both.more(1, 100.0)
    assert not Workload(prompts=("a",), repeat=1).several


def test_a_prompts_file_is_lines_or_json_lines(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("def f(x):\n\n  class A:\n")
    assert read_prompts_file(str(lines)) == (("def f(x):", "  class A:"), ("line 1", "line 3"))
    jsonl = tmp_path / "p.jsonl"
    rows = [{"id": "HE/1", "prompt": "def f(x):\n    return"}, {"prompt": "import os"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_prompts_file(str(jsonl)) == (
        ("def f(x):\n    return", "import os"),
        ("HE/1", "line 2"),
    )
    starts_with_brace = tmp_path / "rows"
    starts_with_brace.write_text(json.dumps(rows[0]) + "\n")
    assert read_prompts_file(str(starts_with_brace))[1] == ("HE/1",)


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        ('{"prompt": "a"}\nnot json\n', r"line 2 is not JSON \(JSON Lines: one object a line\)"),
        ('{"text": "a"}\n', r'line 1 has no "prompt" text'),
        ('{"prompt": "  "}\n', r'line 1 has no "prompt" text'),
        ("[1, 2]\n", r"line 1 has no \"prompt\" text"),
        ("\n\n", r"holds no prompts"),
    ],
)
def test_a_bad_prompts_file_is_one_sentence_naming_the_line(tmp_path, content, sentence):
    path = tmp_path / ("p.jsonl" if content.startswith("[") else "p.txt")
    path.write_text(content)
    with pytest.raises(EngineInputError, match=sentence) as refused:
        read_prompts_file(str(path))
    assert str(refused.value).startswith(f"--prompts-file {path}") and "\n" not in str(
        refused.value
    )
    with pytest.raises(EngineInputError, match=r"^cannot read --prompts-file .*/none"):
        read_prompts_file(str(tmp_path / "none"))


def objects_held(root: object) -> int:
    """How many containers `root` reaches and how many items they hold, all told."""
    seen, todo, items = set(), [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type) or not gc.is_tracked(obj):
            continue  # numbers and strings hold nothing
        seen.add(id(obj))
        items += len(obj) if isinstance(obj, list | tuple | dict | set) else 0
        todo.extend(gc.get_referents(obj))
    return len(seen) + items


def doc(steps, committed, new, decode_s, base_new=None, same=True):
    return {
        "steps": steps,
        "drafted": steps * 4,
        "accepted": committed - steps,
        "committed": committed,
        "prompt_tokens": 5,
        "new_tokens": new,
        "decode_s": decode_s,
        "prefill_s": 0.1,
        "wall_s": decode_s + 0.1,
        "temperature": 0.0,
        "output_token_ids": list(range(new)),
        "baseline": None
        if base_new is None
        else {
            "new_tokens": base_new,
            "decode_s": 2 * decode_s,
            "output_token_ids": list(range(base_new)) if same else [7] * base_new,
        },
    }


def test_running_totals_give_the_figures_of_the_whole_list_and_stay_the_same_size():
    docs = [doc(3, 9, 9, 1.0, 9), doc(5, 11, 11, 2.0, 11), doc(2, 6, 6, 0.5, 6, same=False)]
    pool = PooledFigures()
    held = []
    for d in docs * 100:
        pool.add(d)
        held.append(objects_held(pool))
    assert pool.figures() == pooled_figures(docs * 100)
    assert held[2] == held[-1]  # numbers only: nothing in it grows with the prompts
    figures = pooled_figures(docs[:2])
    assert figures["mean_acceptance_length"] == 20 / 8 and figures["identical_to_baseline"]
    assert figures["decode_tokens_per_s"] == 18 / 3.0 and figures["speedup"] == 2.0
    assert pooled_figures([*docs[:2], doc(1, 3, 3, 0.1)])["baseline"] is None  # one lacks it


def test_prompt_rows_are_appended_whole_and_read_back_with_the_run(tmp_path):
    recorder = RunRecorder(
        tmp_path, target_model="t", draft_model="d", placement={"target": ["cpu"], "draft": "cpu"},
        mode="inprocess", options={},
    )  # fmt: skip
    assert not (recorder.folder / "prompts.jsonl").exists()  # one prompt: no rows
    for index in range(3):
        recorder.prompt({"index": index, "prompt_id": f"line {index + 1}", "new_tokens": 4})
    with (recorder.folder / "prompts.jsonl").open("a") as fh:
        fh.write('{"index": 3, "cut sh')  # a crash mid-line
    recorder.finish({"prompt_count": 3})
    run = load_run(tmp_path, recorder.run_id)
    assert [r["index"] for r in run["prompts"]] == [0, 1, 2]
    assert all(r["time_s"] >= 0 for r in run["prompts"])
    assert "| prompts | 3 |" in (recorder.folder / "summary.md").read_text()
