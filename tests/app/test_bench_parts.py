"""Bench parts without a terminal: placements files, prompt choice, pooled figures, rows."""

from __future__ import annotations

import pytest

from app.bench.placements import parse_placements
from app.bench.report import markdown, table_rows
from app.bench.suites import BenchPrompt, select_prompts, suite_prompts
from backends.placement import PlacementError
from engine.errors import EngineInputError
from engine.metrics import pooled_figures

GOOD = """
[[placement]]
name = "split over two"
target = ["cuda:0", "cuda:1"]
draft = "cuda:1"
mode = "split"

[[placement]]
target = "cpu"
draft_model = "/models/draft"
"""


def test_a_placements_file_gives_each_placement_and_defaults_the_rest():
    first, second = parse_placements(GOOD)
    assert (first.name, first.target, first.draft, first.mode) == (
        "split over two", "cuda:0,cuda:1", "cuda:1", "split",
    )  # fmt: skip
    assert first.target_model is None and first.draft_model is None
    assert second.target == "cpu" and second.draft is None and second.mode is None
    assert second.draft_model == "/models/draft" and second.name == "cpu <- default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[placement]\n", "not valid TOML"),
        ("title = 'x'\n", "unknown key 'title'"),
        ("", "no \\[\\[placement\\]\\] tables"),
        ("[[placement]]\ntarget = 'cpu'\ngpu = 1\n", "placement 1: unknown key 'gpu'"),
        ("[[placement]]\ntarget = 'cpu'\nmode = 'fast'\n", "mode must be inprocess or split"),
        ("[[placement]]\ntarget = 3\n", "target must be a non-empty string"),
        ("[[placement]]\ntarget = []\n", "target must be a device id or a list"),
        ("[[placement]]\nname='a'\n[[placement]]\nname='a'\n", "placement 2: the name 'a'"),
    ],
)
def test_a_bad_placements_file_is_one_line(text, message):
    with pytest.raises(PlacementError, match=message) as caught:
        parse_placements(text, "p.toml")
    assert str(caught.value).startswith("placements file p.toml: ")
    assert "\n" not in str(caught.value)


def test_prompts_are_the_first_n_or_a_seeded_sample():
    prompts = [BenchPrompt(f"p/{i}", f"text {i}") for i in range(10)]
    assert [p.id for p in select_prompts(prompts, 3, None, 0)] == ["p/0", "p/1", "p/2"]
    sample = select_prompts(prompts, 10, 4, seed=7)
    assert sample == select_prompts(prompts, 10, 4, seed=7) and len(sample) == 4
    assert sample != select_prompts(prompts, 10, 4, seed=8)
    with pytest.raises(EngineInputError, match="--n 11: suite has 10 prompts"):
        select_prompts(prompts, 11, None, 0)
    with pytest.raises(EngineInputError, match="--sample must be at least 1"):
        select_prompts(prompts, 3, 0, 0)


def test_humaneval_prompts_come_from_the_package():
    prompts = suite_prompts("humaneval", 2)
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1"]
    assert prompts[0].text.startswith("from typing import List")
    assert not prompts[0].text.endswith("\n")


def doc(steps, committed, new, decode_s, base_new, base_s, same=True):
    out = list(range(new))
    return {
        "steps": steps, "drafted": 4 * steps, "accepted": committed - steps,
        "committed": committed, "new_tokens": new, "decode_s": decode_s, "prefill_s": 0.1,
        "wall_s": decode_s + 0.1, "temperature": 0.0, "prompt_tokens": 5,
        "output_token_ids": out,
        "baseline": {"new_tokens": base_new, "decode_s": base_s,
                     "output_token_ids": out if same else [9] * base_new},
    }  # fmt: skip


def test_pooled_figures_pool_counts_not_per_prompt_means():
    pooled = pooled_figures([doc(2, 8, 9, 1.0, 9, 4.0), doc(10, 10, 11, 1.0, 11, 2.0)])
    assert pooled["mean_acceptance_length"] == 18 / 12  # not the mean of 4.0 and 1.0
    assert pooled["acceptance_rate"] == 6 / 48
    assert pooled["decode_tokens_per_s"] == (8 + 10) / 2.0
    assert pooled["baseline"]["decode_tokens_per_s"] == 18 / 6.0
    assert pooled["speedup"] == pytest.approx(9.0 / 3.0)
    assert pooled["identical_to_baseline"] is True
    assert pooled_figures([doc(2, 8, 9, 1.0, 9, 4.0, same=False)])["identical_to_baseline"] is False


def test_rows_show_peers_and_failures():
    result = {**pooled_figures([doc(2, 8, 9, 1.0, 9, 4.0)]), "prompts": []}
    placements = [
        {"name": "a", "placement": {"target": ["cuda:0"], "draft": "sim-hip:0"},
         "simulated_devices": ["sim-hip:0"], "mode": "split", "target_model": "t",
         "draft_model": "d", "result": result, "error": None,
         "peers": {"hf": {"mean_acceptance_length": 2.0, "decode_tokens_per_s": 4.0,
                          "speedup": 2.0, "identical_to_baseline": True, "error": None}}},
        {"name": "b", "placement": {"target": ["cpu"], "draft": "cpu"}, "simulated_devices": [],
         "mode": "inprocess", "target_model": "t", "draft_model": "d", "result": None,
         "error": "the draft daemon died", "peers": {}},
    ]  # fmt: skip
    rows = table_rows(placements)
    assert [r["mode"] for r in rows] == ["split", "hf assisted", "inprocess"]
    assert rows[0]["draft"] == "sim-hip:0 (simulated)" and rows[0]["mean_al"] == 4.0
    assert rows[1]["target_only_tokens_per_s"] == rows[0]["target_only_tokens_per_s"] == 2.0
    assert rows[2]["mean_al"] is None and rows[2]["error"] == "the draft daemon died"
    page = markdown({
        "bench_id": "x", "host": "h", "time": "now", "suite": "humaneval",
        "prompts": [{"id": "HumanEval/0"}],
        "settings": {"k": 4, "temperature": 0.0, "seed": 0, "max_new_tokens": 8,
                     "warmup_tokens": 4},
        "rows": rows,
    })  # fmt: skip
    assert "| a | sim-hip:0 (simulated) | cuda:0 | split | t <- d | 4.00 | 75.0% |" in page
    assert "failed: the draft daemon died" in page
