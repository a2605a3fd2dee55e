"""Watching a run from other processes: its watch endpoint, late joiners, readers that lag."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from backends.base import ProcessInfo, Sample
from engine.metrics import StepRecord
from ipc import codec
from ipc import events as ev
from ipc.owners import OWNER_FILE, RUN_DIR_PREFIX, process_identity
from ipc.watch import (
    WATCH_HWM,
    RunHeader,
    WatchError,
    WatchFeed,
    WatchPublisher,
    event_from,
    item_fields,
    live_runs,
    sample_from,
)
from tests import watched_runs
from tests.watched_runs import ended, python_process, specdeck_run

run_dirs = watched_runs.run_dirs  # the fixture

# a reader in a process of its own: prints its header, then what it saw, as JSON lines;
# with "stuck" it takes its catch-up, says so, and then never reads again
READER = """
import json, sys, time
from ipc.watch import WatchFeed, live_runs
data_dir, mode = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 120
while not (runs := live_runs(data_dir)):
    assert time.monotonic() < deadline, "no live run appeared"
    time.sleep(0.02)
feed = WatchFeed(runs[0])
header = feed.hello()
print(json.dumps({"run_id": header.run_id, "mode": header.mode}), flush=True)
if mode == "stuck":
    sys.stdin.read()  # never reads the feed again; the test ends this process
    sys.exit(0)
seen = {"steps": 0, "tokens": 0, "samples": 0, "states": [], "daemons": [], "text": ""}
for item in feed:
    name = type(item).__name__
    if name == "StepEvent":
        seen["steps"] += 1
        seen["tokens"] = item.new_tokens
        seen["text"] += item.text
    elif name == "Sample":
        seen["samples"] += 1
    elif name == "StatusEvent" and item.role == "run":
        seen["states"].append(item.state)
    elif name == "DaemonEvent":
        seen["daemons"].append(item.role)
seen["missed"] = feed.missed
loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
seen["torch"] = loaded
print(json.dumps(seen), flush=True)
"""


def start_reader(mode: str) -> subprocess.Popen:
    return python_process("-c", READER, os.environ["SPECDECK_DATA_DIR"], mode, stdin=True)


def header_of(reader: subprocess.Popen) -> dict:
    line = reader.stdout.readline()
    assert line, reader.stderr.read()
    return json.loads(line)


def step_event(index: int, text: str = "x") -> ev.StepEvent:
    step = StepRecord(index, 4, 3, 4, 0.01, 0.02, 0.001, k=4)
    return ev.StepEvent(step, (1, 2, 3, 4), text, 3.5, 0.75, (1.0, 0.5), 120.0, index * 4)


def header(run_id: str = "r1", record_dir: str = "/nonexistent/runs/r1") -> RunHeader:
    owner = process_identity()
    return RunHeader(
        run_id=run_id,
        target_model="t",
        draft_model="d",
        placement={"target": ["cpu"], "draft": "cpu"},
        mode="split",
        options={"k": 4},
        record_dir=record_dir,
        pid=owner["pid"],
        host=owner["host"],
        started=owner["started"],
    )


# -- the wire -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        ev.StatusEvent("target", "decode", "decoding"),
        step_event(7, "hello"),
        ev.TokenEvent("baseline", (5, 6), "ab", 2, None),
        ev.LogEvent("warning", "careful", "draft"),
        ev.ErrorEvent("draft", "died", -9),
        ev.DoneEvent({"new_tokens": 3, "baseline": None}),
        ev.DaemonEvent("target", 123, ("cpu", "sim-cuda:0")),
        ev.PromptEvent(1, 5, {"new_tokens": 3}),
    ],
)
def test_every_run_event_crosses_the_wire_unchanged(event):
    frames = codec.encode(
        "event", {"seq": 1, "kind": type(event).__name__, "event": item_fields(event)}
    )
    msg = codec.decode(frames)
    assert event_from(msg["kind"], msg["event"]) == event


def test_a_sample_crosses_the_wire_unchanged():
    sample = Sample(
        "cpu", 12.5, 1, 2, 3.5, None, None, 40.0, (ProcessInfo(9, "python", 5),), "decode"
    )
    msg = codec.decode(codec.encode("sample", {"sample": item_fields(sample)}))
    assert sample_from(msg["sample"]) == sample


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("Nonsense", {}),
        ("StatusEvent", {"role": "x"}),  # a missing field
        ("StatusEvent", {"role": "x", "state": 3, "text": ""}),  # a field of the wrong kind
        ("StatusEvent", {"role": "x", "state": "s", "text": "", "extra": 1}),
        ("StepEvent", {**item_fields(step_event(1)), "step": {"index": "one"}}),
    ],
)
def test_an_event_that_is_not_one_is_a_protocol_error(kind, fields):
    with pytest.raises(codec.ProtocolError):
        event_from(kind, fields)


# -- the endpoint, in this process ----------------------------------------------------------------


def test_a_late_joiner_gets_the_header_each_roles_state_and_then_only_new_events(run_dirs):
    publisher = WatchPublisher(run_dirs, header())
    publisher.start()
    early = WatchFeed(f"ipc://{run_dirs}/watch.sock")
    try:
        early.hello()
        publisher.publish(ev.DaemonEvent("target", 11, ("cpu",)))
        publisher.publish(ev.StatusEvent("target", "decode", ""))
        for i in range(600):  # more than the replay: the daemon and status are older than it
            publisher.publish(step_event(i))
        publisher.publish(Sample("cpu", 1.0, utilization_percent=50.0, phase="decode"))
        while not isinstance(early.next(10), Sample):  # all of it has gone out
            pass
        with WatchFeed(f"ipc://{run_dirs}/watch.sock") as feed:
            assert feed.hello().run_id == "r1"
            first = [feed.next(5) for _ in range(2 + 512 + 1)]
            assert first[:2] == [
                ev.DaemonEvent("target", 11, ("cpu",)),
                ev.StatusEvent("target", "decode", ""),
            ]
            assert [e.step.index for e in first[2:-1]] == list(range(600 - 512, 600))
            assert first[-1].utilization_percent == 50.0
            publisher.publish(step_event(600))
            publisher.publish(ev.StatusEvent("run", "done"))
            rest = list(feed)
            assert [type(e).__name__ for e in rest] == ["StepEvent", "StatusEvent"]
            assert feed.ended and feed.missed == 0
    finally:
        early.close()
        publisher.close()


def test_a_reader_that_never_reads_stalls_neither_the_run_nor_the_other_readers(run_dirs):
    """Far more than a reader's queue and the socket buffers together, while one reader in
    another process never reads: publishing goes on (a publish that waited for that reader
    would hang here), a reading reader gets every event, and the one that never read finds
    only a bounded part waiting for it."""
    publisher = WatchPublisher(run_dirs, header())
    publisher.start()
    stuck = start_reader_at(f"ipc://{run_dirs}/watch.sock")
    try:
        assert stuck.stdout.readline().strip() == "ready"
        got: list[int] = []
        feed = WatchFeed(f"ipc://{run_dirs}/watch.sock")
        feed.hello()
        total, batch = 4 * WATCH_HWM, 2048
        text = "t" * 200
        for start in range(0, total, batch):
            for i in range(start, start + batch):
                publisher.publish(step_event(i, text))
            while len(got) < start + batch:  # the reading reader keeps up batch by batch
                item = feed.next(10)
                assert item is not None, f"the reading reader stalled at {len(got)}"
                got.append(item.step.index)
        assert got == list(range(total)) and feed.missed == 0
        assert publisher.dropped == 0
        assert stuck.poll() is None  # it is still there, never having read
        feed.close()
        stuck.stdin.write("read now\n")
        stuck.stdin.flush()
        waited = int(stuck.stdout.readline())  # what had waited for it: bounded, not all
        assert WATCH_HWM // 2 < waited < total // 2
    finally:
        stuck.kill()
        stuck.wait()
        publisher.close()


def start_reader_at(endpoint: str) -> subprocess.Popen:
    code = (
        "import sys\nfrom ipc.watch import WatchFeed\n"
        "feed = WatchFeed(sys.argv[1]); feed.hello(); print('ready', flush=True)\n"
        "sys.stdin.readline()\n"  # never reads the feed until the test says so
        "got = 0\n"
        "while feed.next(2) is not None: got += 1\n"
        "print(got, flush=True)\n"
    )
    return python_process("-c", code, endpoint, stdin=True)


def test_a_run_that_has_ended_cannot_be_watched(run_dirs):
    with pytest.raises(WatchError, match="ended"):
        WatchFeed(f"ipc://{run_dirs}/watch.sock")


def test_a_run_whose_process_was_killed_ends_its_feed_from_its_record(run_dirs, tmp_path):
    """A run killed before its last event: the feed ends with the status its record holds."""
    record = tmp_path / "runs" / "r1"
    record.mkdir(parents=True)
    (record / "run.json").write_text(json.dumps({"status": "stopped"}))
    publisher = WatchPublisher(run_dirs, header(record_dir=str(record)))
    publisher.start()
    with WatchFeed(f"ipc://{run_dirs}/watch.sock") as feed:
        feed.hello()
        publisher.close()  # the endpoint goes, no end was sent: like a killed run
        (run_dirs / "watch.sock").unlink(missing_ok=True)
        end = feed.next(10)
        assert end == ev.StatusEvent("run", "stopped", "its last events were not heard")
        assert feed.ended


# -- real runs, watched from other processes ------------------------------------------------------


def test_two_readers_and_one_that_never_reads_watch_a_cli_run_to_its_end(tiny_pair, run_dirs):
    readers = [start_reader("read"), start_reader("read")]
    stuck = start_reader("stuck")
    cli = specdeck_run(tiny_pair, k=2, max_new_tokens=120)
    try:
        headers = [header_of(r) for r in (*readers, stuck)]
        out, err = cli.communicate(timeout=180)  # the run ends though one reader never reads
        assert cli.returncode == 0, err
        document = json.loads(out)
        assert {h["run_id"] for h in headers} == {document["run_id"]}
        assert headers[0]["mode"] == "split"
        for reader in readers:
            seen = json.loads(reader.communicate(timeout=60)[0].splitlines()[-1])
            assert seen["states"] == ["done"]
            assert seen["tokens"] == document["new_tokens"]
            assert seen["missed"] == 0
            assert seen["steps"] == document["steps"]  # every step, none twice
            assert seen["text"] and document["output_text"].endswith(seen["text"])
            assert sorted(seen["daemons"]) == ["draft", "target"]
            assert seen["samples"] > 0
            assert seen["torch"] == []
        assert stuck.poll() is None
        assert live_runs(os.environ["SPECDECK_DATA_DIR"]) == []
    finally:
        for process in (*readers, stuck, cli):
            ended(process)


def test_live_runs_lists_open_endpoints_of_live_owners_under_the_data_dir(run_dirs, tmp_path):
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=run_dirs))
    (run_dir / OWNER_FILE).write_text(json.dumps(process_identity()))
    publisher = WatchPublisher(run_dir, header(record_dir=str(tmp_path / "data/runs/r1")))
    publisher.start()
    try:
        (found,) = live_runs(tmp_path / "data")
        assert (found.run_id, found.run_dir) == ("r1", run_dir)
        assert found.endpoint == f"ipc://{run_dir}/watch.sock"
        assert live_runs(tmp_path / "elsewhere") == []
        (run_dir / OWNER_FILE).write_text(json.dumps({**process_identity(), "pid": 2**22 + 1}))
        assert live_runs(tmp_path / "data") == []  # its owner is gone
    finally:
        publisher.close()
