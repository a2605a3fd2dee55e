"""Runs through real daemons: same tokens as in-process, records kept, faults reported."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from backends.base import Device
from backends.discovery import discover
from backends.placement import Placement
from engine.catalog import resolve_model
from ipc import events as ev
from ipc.run_spec import RunSpec, check_run
from ipc.runner import start_run

PROMPT = "def add(a, b):\n    return"


class Quiet:
    """A stand-in device sampler: no telemetry, phases remembered."""

    def __init__(self):
        self.phases = []

    def subscribe(self, callback):
        return lambda: None

    @property
    def phase(self):
        return self.phases[-1] if self.phases else "idle"

    @phase.setter
    def phase(self, value):
        self.phases.append(value)


def request(tiny_pair, *, draft=None, max_new_tokens=40, mode="split", k=4, **checked):
    """The tiny pair on the CPU as a checked run; `checked` overrides CheckedRun fields (to
    reach the daemons with what the check would refuse)."""
    target, default_draft = tiny_pair
    spec = RunSpec(
        target_model=str(target),
        draft_model=str(default_draft),
        target=("cpu",),
        draft="cpu",
        mode=mode,
        k=k,
        prompts=(PROMPT,),
        max_new_tokens=max_new_tokens,
        warmup_tokens=0,
    )
    run = check_run(spec, discover())
    if draft is not None:
        checked["draft"] = resolve_model(str(draft))
    return replace(run, **checked)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_split_greedy_gives_the_in_process_tokens_and_writes_a_record(tiny_pair, tmp_path):
    from engine.catalog import resolve_model
    from engine.loading import load_model
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder

    seen = []
    sampler = Quiet()
    handle = start_run(
        request(tiny_pair),
        inventory=discover(),
        sampler=sampler,
        on_event=seen.append,
        data_dir=tmp_path,
    )
    result = handle.wait(120)
    assert handle.error is None and result is not None

    target = load_model(resolve_model(str(tiny_pair[0])), ["cpu"])
    drafter = LocalDrafter(load_model(resolve_model(str(tiny_pair[1])), ["cpu"]))
    prompt = target.tokenizer(PROMPT)["input_ids"]
    want = SpeculativeDecoder(target, drafter, 4, 0.0, 0).generate(prompt, 40)
    assert result["output_token_ids"] == want.output_ids
    assert result["mean_acceptance_length"] == want.stats.mean_acceptance_length
    assert result["mode"] == "split" and result["run_id"] == handle.run_id

    steps = [e for e in seen if isinstance(e, ev.StepEvent)]
    assert len(steps) == result["steps"] and steps[-1].mean_acceptance_length is not None
    assert {e.role for e in seen if isinstance(e, ev.DaemonEvent)} == {"draft", "target"}
    assert isinstance(seen[-2], ev.DoneEvent)
    assert {"load", "prefill", "decode", "idle"} <= set(sampler.phases)

    folder = tmp_path / "runs" / handle.run_id
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "done" and run["summary"]["output_token_ids"] == want.output_ids
    lines = (folder / "steps.jsonl").read_text().splitlines()
    assert len(lines) == result["steps"] and "transport_s" in json.loads(lines[0])
    assert {"devices.csv", "summary.md", "draft.log", "target.log"} <= set(os.listdir(folder))
    assert not any(alive(pid) for pid in handle.pids.values())


def test_a_killed_draft_daemon_ends_the_run_within_3_s_and_keeps_the_record(tiny_pair, tmp_path):
    first_step = []
    handle = start_run(
        request(tiny_pair, max_new_tokens=900, k=1),
        inventory=discover(),
        sampler=Quiet(),
        data_dir=tmp_path,
        on_event=lambda e: isinstance(e, ev.StepEvent) and first_step.append(time.monotonic()),
    )
    deadline = time.monotonic() + 120
    while not first_step and time.monotonic() < deadline and not handle.finished:
        time.sleep(0.01)
    assert first_step, handle.error
    os.kill(handle.pids["draft"], signal.SIGKILL)
    killed = time.monotonic()
    assert handle.wait(10) is None
    assert time.monotonic() - killed < 3.0
    assert handle.error.role == "draft" and handle.error.exit_status == -signal.SIGKILL
    assert "draft daemon" in handle.error.text and "SIGKILL" in handle.error.text
    run = json.loads((tmp_path / "runs" / handle.run_id / "run.json").read_text())
    assert run["status"] == "failed" and "draft daemon" in run["error"]
    assert (tmp_path / "runs" / handle.run_id / "steps.jsonl").read_text().strip()
    assert not any(alive(pid) for pid in handle.pids.values())


def test_a_draft_that_cannot_load_reports_its_own_error(tiny_pair, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    handle = start_run(
        request(tiny_pair, draft=broken),
        inventory=discover(),
        sampler=Quiet(),
        data_dir=tmp_path,
    )
    assert handle.wait(120) is None
    assert handle.error.role == "draft" and handle.error.exit_status == 2  # bad input
    assert handle.error.text.startswith("draft daemon: ")
    assert "Traceback" not in handle.error.text and "\n" not in handle.error.text
    assert not any(alive(pid) for pid in handle.pids.values())


class HipInventory:
    """One HIP GPU that this machine's CPU-only torch cannot drive."""

    devices = (Device(id="hip:0", backend="hip", name="MI300X", index=0, uuid="GPU-1"),)

    def get(self, device_id):
        return self.devices[0] if device_id == "hip:0" else None


def test_a_daemon_whose_torch_does_not_match_its_backend_names_the_setting(tiny_pair, tmp_path):
    req = request(
        tiny_pair,
        mode="inprocess",
        placement=Placement(("hip:0",), "hip:0"),
        devices={"hip:0": HipInventory.devices[0]},
        config_path="/home/me/specdeck.toml",
    )
    handle = start_run(req, inventory=HipInventory(), sampler=Quiet(), data_dir=tmp_path)
    assert handle.wait(120) is None
    assert handle.error.role == "target" and handle.error.exit_status == 1
    assert "[backends.hip] python = " in handle.error.text
    assert "/home/me/specdeck.toml" in handle.error.text


ORPHAN_SCRIPT = """
import sys, time
from backends.discovery import discover
from backends.placement import Placement
from ipc.run_spec import RunSpec, check_run
from ipc.runner import start_run
spec = RunSpec(sys.argv[1], sys.argv[2], ("cpu",), "cpu", "split", 1, prompts=("x",),
               max_new_tokens=900, warmup_tokens=0)
handle = start_run(check_run(spec, discover()), inventory=discover(), data_dir=sys.argv[3])
while len(handle.pids) < 2:
    time.sleep(0.05)
print(handle.pids["draft"], handle.pids["target"], flush=True)
time.sleep(120)
"""


def test_daemons_do_not_outlive_a_sigkilled_specdeck(tiny_pair, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(tiny_pair[0]), str(tiny_pair[1]), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(1.0)  # let them get going
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


@pytest.fixture(autouse=True)
def _no_stray_children():
    yield
    # every test above reaps its daemons; a leftover would show up here as a child
    import psutil

    assert not [c for c in psutil.Process().children() if c.status() != "zombie"]


def test_a_configured_interpreter_that_exits_at_once_is_named(tiny_pair, tmp_path):
    checked = request(  # /bin/false starts, then exits 1 without a word
        tiny_pair, backend_python={"cpu": "/bin/false"}, config_path=str(tmp_path / "config.toml")
    )
    handle = start_run(checked, inventory=discover(), sampler=Quiet(), data_dir=tmp_path)
    assert handle.wait(60) is None
    assert "died: exit status 1" in handle.error.text
    assert f"[backends.cpu] python = '/bin/false' ({tmp_path / 'config.toml'})" in (
        handle.error.text
    )


def test_records_name_the_models_as_the_request_does(tiny_pair, tmp_path):
    from engine.catalog import demo_pair

    checked = check_run(RunSpec(target=("cpu",), max_new_tokens=4), discover())
    handle = start_run(checked, inventory=discover(), sampler=Quiet(), data_dir=tmp_path)
    result = handle.wait(120)
    assert result is not None, handle.error
    names = tuple(info.name for info in demo_pair())
    assert (result["target_model"], result["draft_model"]) == names
    run = json.loads((tmp_path / "runs" / handle.run_id / "run.json").read_text())
    assert (run["target_model"], run["draft_model"]) == names
