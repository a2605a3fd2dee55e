"""benchmarks/long_run.py, short: the dashboard launches a time-bounded split run of the demo
pair, the run ends by itself with a complete record, and the RSS series is reported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.test_dashboard_launch import _demo_pair_present

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.skipif(not _demo_pair_present(), reason="the bundled demo pair is not built")
def test_a_time_bounded_run_from_the_dashboard_ends_with_a_complete_record(tmp_path):
    out = tmp_path / "long-run.json"
    done = subprocess.run(
        [
            sys.executable, "benchmarks/long_run.py", "--duration", "3s", "--settle", "1s",
            "--every", "1", "--out", str(out),
        ],
        cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(out.read_text())
    run = document["run"]
    assert run["outcome"] == "done" and run["status"] == "done", run
    assert run["prompts_done"] >= 1 and run["steps_recorded"] >= 1
    rows = [json.loads(line) for line in (Path(run["record"]) / "prompts.jsonl").open()]
    assert len(rows) == run["prompts_done"]
    assert len(document["rss_mb"]) >= 2 and document["rss_growth_after_settle_mb"] is not None
