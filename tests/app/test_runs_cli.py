"""`specdeck runs`: list and show the run records."""

import json

from app.cli import main
from app.config import data_dir
from ipc.records import RunRecorder


def record(run_id, al):
    rec = RunRecorder(
        data_dir(),
        run_id=run_id,
        target_model="/models/big",
        draft_model="/models/small",
        placement={"target": ["cuda:0"], "draft": "cuda:1"},
        mode="split",
        options={"k": 4, "temperature": 0.0, "seed": 0, "prompt": "hi"},
    )
    rec.finish(
        {
            "mean_acceptance_length": al,
            "acceptance_rate": 0.5,
            "decode_tokens_per_s": 123.4,
            "speedup": 1.8,
        }
    )


def test_runs_lists_every_record(capsys):
    record("20250101-120000-aaaa", 2.5)
    record("20250102-120000-bbbb", 3.25)
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "20250101-120000-aaaa" in out and "3.25" in out and "/models/big <- /models/small" in out
    assert "cuda:0 <- cuda:1 (split)" in out and "1.80x" in out
    assert main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert [r["mean_acceptance_length"] for r in listed] == [3.25, 2.5]  # newest first
    lines = out.splitlines()
    assert lines[1].startswith("20250102") and lines[2].startswith("20250101")


def test_runs_show_by_prefix(capsys):
    record("20250101-120000-aaaa", 2.5)
    assert main(["runs", "show", "20250101"]) == 0
    assert "2.50" in capsys.readouterr().out
    assert main(["runs", "show", "20250101", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["mean_acceptance_length"] == 2.5


def test_unknown_run_is_one_line_and_status_2(capsys):
    assert main(["runs", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


def test_no_records_yet(capsys):
    assert main(["runs"]) == 0
    assert "no run records" in capsys.readouterr().out


async def test_the_dashboard_lists_runs_in_the_cli_s_order_newest_first(capsys):
    from textual.app import App

    from app.widgets.runs import RunsTable
    from ipc.records import list_runs

    record("20250101-120000-aaaa", 2.5)
    record("20250102-120000-bbbb", 3.25)

    class Host(App):
        def compose(self):
            yield RunsTable()

    app = Host()
    async with app.run_test():
        table = app.query_one(RunsTable)
        table.show(list_runs(data_dir()))
        shown = [str(key.value) for key in table.rows]
        models = table.get_row_at(0)[3:5]
    assert main(["runs", "--json"]) == 0
    listed = [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]]
    assert shown == listed == ["20250102-120000-bbbb", "20250101-120000-aaaa"]
    assert list(models) == ["/models/big", "/models/small"]  # as recorded, as the CLI shows them
