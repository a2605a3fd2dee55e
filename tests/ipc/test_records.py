"""Run records: written as the run goes, readable after, listed and found by prefix."""

import csv
import json
import time

import pytest

from backends.base import Sample
from engine.metrics import StepRecord
from ipc.records import RunNotFound, RunRecorder, list_runs, load_run


def make_recorder(data_dir, run_id="20250101-120000-abcd"):
    return RunRecorder(
        data_dir,
        run_id=run_id,
        target_model="big",
        draft_model="small",
        placement={"target": ["cuda:0"], "draft": "cuda:1"},
        mode="split",
        options={"k": 4, "temperature": 0.0, "seed": 0, "prompt": "hi"},
    )


def step(i, accepted=2):
    return StepRecord(
        index=i,
        drafted=4,
        accepted=accepted,
        committed=accepted + 1,
        draft_s=0.01,
        verify_s=0.02,
        transport_s=0.001,
        k=4,
    )


def test_a_finished_run_writes_all_four_files(tmp_path):
    rec = make_recorder(tmp_path)
    rec.step(step(0), 3.0)
    rec.step(step(1, accepted=4), 4.0)
    rec.sample(
        Sample("cuda:1", 1.5, memory_used_bytes=10, utilization_percent=None, phase="decode")
    )
    rec.finish(
        {
            "mean_acceptance_length": 4.0,
            "acceptance_rate": 0.75,
            "decode_tokens_per_s": 100.0,
            "speedup": 2.0,
            "output_text": "out",
        }
    )
    folder = tmp_path / "runs" / rec.run_id
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "done" and run["summary"]["run_id"] == rec.run_id
    lines = [json.loads(x) for x in (folder / "steps.jsonl").read_text().splitlines()]
    assert [x["accepted"] for x in lines] == [2, 4]
    assert {"k", "transport_s", "mean_acceptance_length"} <= set(lines[0])
    rows = list(csv.DictReader((folder / "devices.csv").open()))
    assert rows[0]["phase"] == "decode" and rows[0]["utilization_percent"] == ""
    assert "| mean acceptance length | 4.00 |" in (folder / "summary.md").read_text()


def test_a_failed_run_keeps_its_steps_and_says_why(tmp_path):
    rec = make_recorder(tmp_path)
    rec.step(step(0), 3.0)
    rec.fail("the draft daemon (pid 1) died: killed by SIGKILL (exit status -9)")
    run = load_run(tmp_path, rec.run_id)
    assert run["status"] == "failed" and "SIGKILL" in run["error"]
    assert len(run["steps"]) == 1


def test_runs_are_listed_and_found_by_unique_prefix(tmp_path):
    make_recorder(tmp_path, "20250101-120000-aaaa").finish({"mean_acceptance_length": 2.5})
    make_recorder(tmp_path, "20250102-120000-bbbb")
    runs = list_runs(tmp_path)
    assert [r.run_id for r in runs] == ["20250102-120000-bbbb", "20250101-120000-aaaa"]
    assert runs[1].mean_acceptance_length == 2.5 and runs[0].status == "running"
    assert load_run(tmp_path, "20250102")["run_id"] == "20250102-120000-bbbb"
    with pytest.raises(RunNotFound, match="ambiguous"):
        load_run(tmp_path, "2025010")
    with pytest.raises(RunNotFound, match="no run record"):
        load_run(tmp_path, "1999")


def test_an_unreadable_record_is_skipped(tmp_path):
    make_recorder(tmp_path, "20250101-120000-aaaa")
    (tmp_path / "runs" / "junk").mkdir()
    (tmp_path / "runs" / "junk" / "run.json").write_text("{not json")
    assert [r.run_id for r in list_runs(tmp_path)] == ["20250101-120000-aaaa"]


def test_run_ids_made_in_one_second_still_sort_in_start_order():
    from ipc.records import new_run_id

    ids = []
    for _ in range(5):
        ids.append(new_run_id())
        time.sleep(0.002)
    assert sorted(ids) == ids and len(set(ids)) == 5


def test_ten_thousand_run_ids_made_in_a_loop_are_all_different():
    from ipc.records import new_run_id

    ids = [new_run_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_recorders_started_together_never_share_a_folder(tmp_path, monkeypatch):
    from ipc import records

    # another process took the first id drawn: the recorder draws again instead of failing
    taken = "20250101-120000-000aaaaaa"
    (tmp_path / "runs" / taken).mkdir(parents=True)
    drawn = iter([taken, "20250101-120000-000bbbbbb"])
    monkeypatch.setattr(records, "new_run_id", lambda: next(drawn))
    rec = RunRecorder(
        tmp_path, target_model="big", draft_model="small", placement={"target": ["cpu"],
        "draft": "cpu"}, mode="inprocess", options={},
    )  # fmt: skip
    assert rec.run_id == "20250101-120000-000bbbbbb"


def test_a_chosen_run_id_that_exists_is_one_clear_error(tmp_path):
    from ipc.records import RunIdTaken

    make_recorder(tmp_path, "20250101-120000-aaaa")
    with pytest.raises(RunIdTaken, match="20250101-120000-aaaa.*exists already"):
        make_recorder(tmp_path, "20250101-120000-aaaa")


def test_records_are_readable_by_their_owner_only(tmp_path):
    data = tmp_path / "data"
    rec = make_recorder(data)
    rec.step(step(0), 3.0)
    rec.finish({"mean_acceptance_length": 3.0})
    folder = data / "runs" / rec.run_id
    for path in (data, data / "runs", folder):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_an_open_runs_folder_from_an_older_version_is_tightened(tmp_path):
    (tmp_path / "runs").mkdir(mode=0o755)
    (tmp_path / "runs").chmod(0o755)
    make_recorder(tmp_path)
    assert (tmp_path / "runs").stat().st_mode & 0o777 == 0o700
