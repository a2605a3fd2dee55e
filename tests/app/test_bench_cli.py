"""`specdeck bench`: the table's rows in JSON, the files written, placements files, peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app.cli import main

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "placement", "draft", "target", "mode", "models", "mean_al", "acceptance", "tokens_per_s",
    "target_only_tokens_per_s", "speedup", "identical",
}  # fmt: skip


def bench(capsys, tiny_pair, *argv: str) -> tuple[int, str, str]:
    code = main([
        "bench", "--target-model", str(tiny_pair[0]), "--draft-model", str(tiny_pair[1]),
        "--n", "2", "--max-new-tokens", "6", "--k", "3", *argv,
    ])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_on_the_cpu_with_the_hf_peer(tiny_pair, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = bench(
        capsys, tiny_pair, "--target", "cpu", "--peers", "hf", "--out", str(out_dir), "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert [p["id"] for p in result["prompts"]] == ["HumanEval/0", "HumanEval/1"]
    ours, peer = result["rows"]
    assert ours.keys() >= ROW_KEYS and peer.keys() >= ROW_KEYS
    assert (ours["mode"], peer["mode"]) == ("inprocess", "hf assisted")
    assert ours["placement"] == "cpu <- cpu"
    assert ours["models"] == f"{tiny_pair[0]} <- {tiny_pair[1]}"  # not in the catalog: as given
    assert ours["identical"] is True and peer["identical"] is True  # greedy
    assert 1.0 <= ours["mean_al"] <= 4.0 and ours["tokens_per_s"] > 0
    assert ours["target_only_tokens_per_s"] > 0 and ours["speedup"] > 0
    placement = result["placements"][0]
    assert placement["result"]["prompt_count"] == 2 and placement["run_id"]
    assert placement["peers"]["hf"]["specdeck_decode_tokens_per_s"] == ours["tokens_per_s"]
    assert sorted(f.name for f in out_dir.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert json.loads((out_dir / "bench.json").read_text())["rows"] == result["rows"]
    assert "| cpu <- cpu | cpu | cpu | inprocess |" in (out_dir / "bench.md").read_text()
    assert f"results in {out_dir}" in err


def test_a_placements_file_runs_each_placement_and_split_serves_every_prompt(
    tiny_twin_pair, tmp_path, capsys
):
    placements = tmp_path / "p.toml"
    placements.write_text(
        '[[placement]]\nname = "together"\ntarget = "cpu"\n\n'
        '[[placement]]\nname = "daemons"\ntarget = ["cpu"]\ndraft = "cpu"\nmode = "split"\n'
    )
    code, out, err = bench(capsys, tiny_twin_pair, "--placements", str(placements), "--json",
                           "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert [(r["placement"], r["mode"]) for r in result["rows"]] == [
        ("together", "inprocess"), ("daemons", "split"),
    ]  # fmt: skip
    together, daemons = (p["result"] for p in result["placements"])
    # the draft is the target: every draft is accepted, so AL is k + 1 wherever k fits
    assert together["acceptance_rate"] == daemons["acceptance_rate"] == 1.0
    assert [d["output_token_ids"] for d in daemons["prompts"]] == [
        d["output_token_ids"] for d in together["prompts"]
    ]
    # one daemon session served both prompts: one record, with both prompts in it
    runs = sorted((tmp_path / "data" / "runs").iterdir())
    assert len(runs) == 2
    split_run = json.loads((runs[1] / "run.json").read_text())
    assert split_run["mode"] == "split" and split_run["options"]["prompts"] == 2
    rows = [json.loads(line) for line in (runs[1] / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert split_run["summary"]["prompt_count"] == 2 and "prompts" not in split_run["summary"]
    steps = (runs[1] / "steps.jsonl").read_text().splitlines()
    assert len(steps) == daemons["steps"]  # the warm-up generation is not in the record
    printed = main(["bench", "--placements", str(placements), "--n", "1", "--max-new-tokens",
                    "2", "--target-model", str(tiny_twin_pair[0]), "--draft-model",
                    str(tiny_twin_pair[1]), "--out", str(tmp_path / "o2")])  # fmt: skip
    assert printed == 0
    table = capsys.readouterr().out
    assert "together" in table and "daemons" in table and "results in" in table


def test_bad_placements_and_options_are_one_line_and_exit_2(tiny_pair, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[placement]]\ntarget = 'cpu'\nmode = 'fast'\n")
    unknown_device = tmp_path / "gpu.toml"
    unknown_device.write_text("[[placement]]\ntarget = 'cuda:7'\n")
    cases = [
        (["--placements", str(bad)], "mode must be inprocess or split"),
        (["--placements", str(tmp_path / "none.toml")], "cannot read placements file"),
        (["--placements", str(unknown_device)], "no device 'cuda:7'"),
        (["--n", "0"], "--n must be at least 1"),
        (["--sample", "999"], "--sample 999: humaneval has 164 prompts"),
    ]
    for argv, message in cases:
        code, out, err = bench(capsys, tiny_pair, *argv)
        assert code == 2 and out == "", err
        assert err.startswith("specdeck: ") and err.count("\n") == 1 and message in err


def test_importing_the_bench_command_loads_no_torch():
    code = (
        "import sys, app.commands.bench, app.bench.report, app.bench.suites; "
        "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_a_suite_prompt_that_overflows_the_context_is_refused_before_loading(tiny_pair, capsys):
    code = main([
        "bench", "--target-model", str(tiny_pair[0]), "--draft-model", str(tiny_pair[1]),
        "--n", "2", "--max-new-tokens", "1000", "--target", "cpu",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("specdeck: prompt 1 of 2 (HumanEval/0): the run needs ")
    assert "has a context of 1024 tokens" in err
