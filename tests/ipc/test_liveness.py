"""Liveness: a busy daemon is alive, a stopped one is gone within its deadline, by name."""

import json
import os
import signal
import time
from dataclasses import replace

import pytest

from backends.discovery import discover
from ipc import events as ev
from ipc.run_spec import Workload
from ipc.runner import start_run
from tests.ipc.test_runner import PROMPT, Quiet, alive, request

LIVENESS_S = 1.0


def start_long_run(tiny_pair, tmp_path, seen, transport="ipc", duration_s=None):
    """A split run of 900 tokens at k = 1 (many steps) with the short liveness deadline; with
    `duration_s`, prompts of 200 tokens one after another until that time is up."""
    run = request(tiny_pair, max_new_tokens=900 if duration_s is None else 200, k=1)
    if duration_s is not None:
        run = replace(run, workload=Workload(prompts=(PROMPT,), duration_s=duration_s))
    return start_run(
        replace(run, spec=replace(run.spec, transport=transport)),
        inventory=discover(),
        sampler=Quiet(),
        on_event=seen.append,
        data_dir=tmp_path,
        liveness_s=LIVENESS_S,
    )


def wait_for_step(seen, handle, limit_s=120):
    deadline = time.monotonic() + limit_s
    while not any(isinstance(e, ev.StepEvent) for e in seen) and not handle.finished:
        assert time.monotonic() < deadline, "no step within the time limit"
        time.sleep(0.01)


class Timed(list):
    """Events as (arrival on the monotonic clock, event)."""

    def append(self, event):
        super().append((time.monotonic(), event))


def test_a_split_run_decoding_far_past_the_liveness_deadline_finishes(tiny_pair, tmp_path):
    seen = Timed()
    # bounded by time, not tokens, so it decodes past several deadlines however fast it goes
    handle = start_long_run(tiny_pair, tmp_path, seen, duration_s=5 * LIVENESS_S)
    result = handle.wait(300)
    assert handle.error is None, handle.error.text
    assert result["stop_reason"] == "duration"
    # the run decoded for several deadlines: steps alone must have kept the target alive
    steps = [at for at, e in seen if isinstance(e, ev.StepEvent)]
    assert steps[-1] - steps[0] > 3 * LIVENESS_S
    run = json.loads((tmp_path / "runs" / handle.run_id / "run.json").read_text())
    assert run["status"] == "done"


@pytest.mark.parametrize("role", ["draft", "target"])
def test_a_stopped_daemon_is_declared_gone_by_name(tiny_pair, tmp_path, role):
    seen = []
    handle = start_long_run(tiny_pair, tmp_path, seen)
    wait_for_step(seen, handle)
    pid = handle.pids[role]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert handle.wait(60) is None
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert handle.error.role == role
    assert f"the {role} daemon (pid {pid}) stopped answering" in handle.error.text
    run = json.loads((tmp_path / "runs" / handle.run_id / "run.json").read_text())
    assert run["status"] == "failed" and f"{role} daemon" in run["error"]
    assert not any(alive(p) for p in handle.pids.values())
