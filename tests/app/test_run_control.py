"""The dashboard's run without Textual: real daemons on the tiny pair, a plain view."""

import os
import queue
import time

import psutil
import pytest

from app.config import load_config
from app.run_control import LiveRun, RunningDaemon, decode_paths_text, done_summary
from backends.discovery import discover
from engine.metrics import StepRecord
from ipc import events as ev
from ipc.records import load_run
from ipc.run_spec import RunSpec
from tests.app.dashboard_fakes import FakeRunHandle

PROMPT = "def add(a, b):\n    return"
RUN_S = 120  # the longest a test waits for a run of the tiny pair, daemons' start included


class Quiet:
    """A stand-in device sampler: no telemetry, phases remembered."""

    def __init__(self):
        self.phase = "idle"

    def subscribe(self, callback):
        return lambda: None


class ShownRun:
    """A plain stand-in for the main screen: what it was told, as a person would see it."""

    def __init__(self):
        self.statuses: list[str] = []
        self.log: list[tuple[str, str, str]] = []  # (level, role, text)
        self.notices: list[tuple[str, str, str]] = []  # (title, severity, message)
        self.figures = None
        self.prompt = None
        self.streamed: list[str] = []
        self.output = ""
        self.running: list[bool] = []
        self.daemons: dict[str, RunningDaemon] = {}
        self.daemons_seen: dict[str, RunningDaemon] = {}
        self.workloads: list = []  # a workload's progress as shown, None for one prompt

    def show_status(self, text):
        self.statuses.append(text)

    def add_log(self, text, level="info", role=""):
        self.log.append((level, role, text))

    def notify(self, message, *, title="", severity="information", timeout=None):
        self.notices.append((title, severity, message))

    def show_figures(self, acceptance, throughput):
        self.figures = (acceptance, throughput)

    def step_figures(self, acceptance, throughput):
        self.figures = (acceptance, throughput)

    def begin_output(self, prompt):
        self.prompt, self.output = prompt, ""

    def append_output(self, text):
        self.streamed.append(text)
        self.output += text

    def finish_output(self, text):
        self.output = text

    def show_running(self, running):
        self.running.append(running)

    def show_daemons(self, daemons):
        self.daemons = dict(daemons)
        self.daemons_seen.update(daemons)

    def show_workload(self, progress):
        self.workloads.append(progress)


def live_run(tmp_path) -> tuple[LiveRun, ShownRun, queue.Queue]:
    """A LiveRun whose deliveries queue up for this test's thread, as the screen's do."""
    view, delivered = ShownRun(), queue.Queue()
    live = LiveRun(
        view, delivered.put, config=load_config(), sampler=Quiet(), data_dir=tmp_path / "data"
    )
    return live, view, delivered


def follow(live: LiveRun, delivered: queue.Queue, until, what: str, timeout_s=RUN_S) -> None:
    """Apply each delivered item on this thread until `until()` holds."""
    deadline = time.monotonic() + timeout_s
    while not until():
        try:
            item = delivered.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            raise AssertionError(f"waited {timeout_s} s for {what}; it never came") from None
        live.apply(item)


def spec(tiny_pair, **options) -> RunSpec:
    """Both roles on the CPU, in two daemons unless `mode` says otherwise."""
    target, draft = tiny_pair
    chosen = {"target_model": str(target), "draft_model": str(draft), "target": ("cpu",)}
    chosen |= {"draft": "cpu", "mode": "split", "k": 4, "prompts": (PROMPT,)}
    return RunSpec(**{**chosen, "max_new_tokens": 24, **options})


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_split_run_streams_its_figures_and_text_then_ends_done(tiny_pair, tmp_path):
    live, view, delivered = live_run(tmp_path)
    assert live.launch(spec(tiny_pair), discover())
    assert live.busy  # the placement is locked from the launch on
    follow(live, delivered, lambda: not live.busy, "the run's end")

    assert live.outcome == "done" and view.running == [True, False]
    assert view.statuses[0].startswith("starting run ") and view.statuses[-1] == "done"
    run_id = view.statuses[0].removeprefix("starting run ")
    record = load_run(tmp_path / "data", run_id)
    summary = record["summary"]
    assert record["status"] == "done"
    launched = view.log[0][2]
    assert launched.startswith("launched ") and "(split; target on cpu, draft on cpu)" in launched
    assert set(view.daemons_seen) == {"target", "draft"} and view.daemons == {}
    assert not any(alive(d.pid) for d in view.daemons_seen.values())

    acceptance, throughput = view.figures
    assert acceptance == live.acceptance and len(acceptance.history) == summary["steps"]
    assert acceptance.mean_al == pytest.approx(summary["mean_acceptance_length"])
    assert throughput.mean == summary["decode_tokens_per_s"] and throughput.now is None
    # each piece as it streamed in; together the record's text
    assert view.prompt == PROMPT and "".join(view.streamed) == summary["output_text"]
    assert view.output == live.output == summary["output_text"]
    assert ("run done", "information", done_summary(summary).removeprefix("done: ")) in (
        view.notices
    )
    assert ("info", "run", "done") in view.log and not [n for n in view.notices if n[1] == "error"]
    paths = [text for _, _, text in view.log if text.startswith("decode paths: ")]
    assert paths and paths[-1].startswith("decode paths: target transformers (")
    assert "draft lean (" in paths[-1]  # the CPU's paths, each with why it is not cuda-graph


@pytest.mark.slow
def test_stop_ends_the_run_stopped_and_a_second_launch_meanwhile_is_refused(tiny_pair, tmp_path):
    live, view, delivered = live_run(tmp_path)
    assert live.launch(spec(tiny_pair, k=1, max_new_tokens=900), discover())
    follow(live, delivered, lambda: live.acceptance.history, "the first step")
    assert not live.launch(spec(tiny_pair), discover())
    assert view.notices[-1] == ("", "warning", "a run is already going on; stop it first")

    assert live.stop() and view.statuses[-1] == "stopping…"
    follow(live, delivered, lambda: not live.busy, "the run's end")
    assert live.outcome == "stopped" and view.statuses[-1] == "stopped"
    assert view.running == [True, False] and view.daemons == {}
    assert not any(alive(d.pid) for d in view.daemons_seen.values())
    assert not [n for n in view.notices if n[1] == "error"]
    assert not live.stop() and view.notices[-1] == ("", "warning", "no run is going on")


@pytest.mark.slow
def test_close_stops_the_run_going_on_and_its_daemon_ends(tiny_pair, tmp_path):
    live, view, delivered = live_run(tmp_path)
    assert live.launch(spec(tiny_pair, mode="inprocess", max_new_tokens=900), discover())
    follow(live, delivered, lambda: "target" in live.daemons, "the target daemon")
    pid = live.daemons["target"].pid
    assert alive(pid)
    live.close(timeout_s=RUN_S)  # as quitting does: it returns once the daemon has ended
    assert live.handle.finished and not alive(pid)


def test_the_one_check_refuses_a_missing_model_and_no_daemon_starts(tiny_pair, tmp_path):
    live, view, delivered = live_run(tmp_path)
    missing = tmp_path / "no-such-model"
    assert live.launch(spec(tiny_pair, target_model=str(missing)), discover())
    follow(live, delivered, lambda: not live.busy, "the refusal")
    assert view.notices == [("cannot launch", "error", f"model folder {missing} does not exist")]
    assert view.running == [] and view.log == [] and live.handle is None


def test_after_close_no_run_starts(tiny_pair, tmp_path):
    live, view, delivered = live_run(tmp_path)
    live.close()
    assert live.launch(spec(tiny_pair), discover())
    follow(live, delivered, lambda: not live.busy, "the launch's end")
    assert view.notices == [("launch failed", "error", "the dashboard is closing")]
    assert view.log == [("error", "", "launch failed: the dashboard is closing")]
    assert live.handle is None and not (tmp_path / "data" / "runs").exists()


def test_events_become_figures_status_and_notices(tmp_path):
    """Events a real run rarely sends in one go (a baseline, a daemon's death), as the runner
    would deliver them; the handle is a stand-in as nothing real is needed."""
    live, view, delivered = live_run(tmp_path)
    live.handle = FakeRunHandle()
    step = StepRecord(0, 5, 3, 4, 0.01, 0.02, 0.005, k=5)
    for event in (
        ev.DaemonEvent("draft", os.getpid(), ("cpu",)),
        ev.StepEvent(step, (1, 2), " x", 4.0, 0.6, (1.0, 0.9, 0.8), 120.0),
        ev.TokenEvent("baseline", (1,), "y", 7, 60.0),
        ev.DoneEvent({"new_tokens": 4, "decode_tokens_per_s": 118.0, "speedup": 1.97,
                      "baseline": {"decode_tokens_per_s": 60.0}, "output_text": " x"}),
        ev.ErrorEvent("draft", "draft daemon died", exit_status=-9),
        ev.StatusEvent("run", "failed"),
    ):  # fmt: skip
        live.apply(event)
    acceptance, throughput = view.figures
    assert acceptance.last_al == 4 and acceptance.mean_al == 4.0 and acceptance.k == 5
    assert throughput.mean == 118.0 and throughput.speedup == pytest.approx(118 / 60)
    assert throughput.now is None  # the run is over: no rate "now"
    assert "baseline: 7 tokens" in view.statuses and view.statuses[-1] == "failed"
    assert view.daemons_seen["draft"].device_ids == ("cpu",) and view.daemons == {}
    assert ("run done", "information", "4 tokens, 118.0 tok/s, speedup 1.97×") in view.notices
    died = ("draft failed", "error", "draft daemon died (exit status -9)")
    assert died in view.notices and view.running == [False]
    assert live.outcome == "failed" and not live.busy


def test_a_finished_run_ends_on_its_last_event_or_without_one_that_was_lost(tmp_path):
    live, view, delivered = live_run(tmp_path)
    live.handle = handle = FakeRunHandle()
    live.notice_end()
    assert live.busy  # still going on
    handle.finished = True
    live._relay(ev.StatusEvent("run", "done"))  # as the runner calls it, from its thread
    live.notice_end()
    assert live.busy  # its last event is on the way: that one ends it
    live.apply(delivered.get_nowait())
    assert not live.busy and live.outcome == "done" and view.statuses[-1] == "done"

    live.handle = handle = FakeRunHandle()  # a second run whose last event never comes
    handle.finished = True
    live.notice_end()
    assert not live.busy and live.outcome == "stopped" and view.statuses[-1] == "stopped"


def test_decode_paths_read_as_the_run_ended():
    result = {
        "decode_paths": {
            "target": {
                "path": "cuda-graph",
                "reason": None,
                "capture_s": 1.62,
                "kernels": "triton",
            },
            "draft": {"path": "lean", "reason": "capturing burst failed: out of memory"},
        }
    }
    assert decode_paths_text(result) == (
        "decode paths: target cuda-graph [triton] (captured in 1.6 s); "
        "draft lean (capturing burst failed: out of memory)"
    )
    slow = {"path": "cuda-graph", "reason": None, "capture_s": 0.0, "kernels": "torch",
            "kernels_reason": "Triton is not installed"}  # fmt: skip
    assert decode_paths_text({"decode_paths": {"draft": slow}}) == (
        "decode paths: draft cuda-graph [torch] (Triton is not installed)"
    )
    assert decode_paths_text({"decode_paths": {}}) is None and decode_paths_text({}) is None
