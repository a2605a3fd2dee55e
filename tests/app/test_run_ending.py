"""How `specdeck run` ends when it is signalled, killed, or its disk fills: records stay true."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from ipc.records import RecordWriteError, RunRecorder, _AppendOnly

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dirs():
    """A private temp dir, short enough that run directories (sockets) are made inside it."""
    folder = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start_cli(tiny_pair, run_dirs, *argv, preexec_fn=None):
    """`specdeck run` on the tiny pair in its own process, with a private temp dir."""
    env = {**os.environ, "TMPDIR": str(run_dirs), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable, "-m", "app.cli", "run",
            "--target-model", str(tiny_pair[0]), "--draft-model", str(tiny_pair[1]),
            "--prompt", "def f(x):", "--k", "1", *argv,
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec_fn,
    )  # fmt: skip


def only_record(data_dir: Path) -> Path:
    """The one run record folder, once it exists."""
    folders = list((data_dir / "runs").glob("*")) if (data_dir / "runs").is_dir() else []
    return folders[0] if len(folders) == 1 else None


def wait_for_steps(proc, data_dir: Path, limit_s: float = 120) -> Path:
    """The run's record folder, once it holds a step line (the run is decoding)."""
    deadline = time.monotonic() + limit_s
    while True:
        folder = only_record(data_dir)
        if folder and (folder / "steps.jsonl").exists() and (folder / "steps.jsonl").stat().st_size:
            return folder
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no step within the time limit"
        time.sleep(0.02)


def daemons_of(proc) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children(recursive=True)]


def gone(processes: list[psutil.Process], limit_s: float = 10) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=limit_s)
    return not alive


@pytest.mark.parametrize(
    ("sig", "status", "mode"),
    [
        (signal.SIGTERM, 143, "split"),
        (signal.SIGHUP, 129, "inprocess"),
        (signal.SIGINT, 130, "split"),
    ],
)
def test_a_signal_stops_the_run_like_ctrl_c(tiny_pair, tmp_path, run_dirs, sig, status, mode):
    data = tmp_path / "data"
    proc = start_cli(tiny_pair, run_dirs, "--mode", mode, "--max-new-tokens", "900")
    folder = wait_for_steps(proc, data)
    children = daemons_of(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip().splitlines() == [f"specdeck: stopped; its record is in {folder}"]
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "stopped"
    assert "status: stopped" in (folder / "summary.md").read_text()
    assert not list(run_dirs.glob("specdeck-*"))
    assert gone(children)


def test_after_a_sigkill_the_next_command_marks_the_record_interrupted(
    tiny_pair, tmp_path, run_dirs
):
    data = tmp_path / "data"
    proc = start_cli(tiny_pair, run_dirs, "--mode", "split", "--max-new-tokens", "900")
    folder = wait_for_steps(proc, data)
    children = daemons_of(proc)
    proc.kill()
    proc.communicate()
    assert gone(children)  # the daemons follow their parent
    assert json.loads((folder / "run.json").read_text())["status"] == "running"
    assert list(run_dirs.glob("specdeck-*"))

    env = {**os.environ, "TMPDIR": str(run_dirs)}
    listed = subprocess.run(
        [sys.executable, "-m", "app.cli", "runs", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "interrupted" and f"pid {proc.pid}" in run["error"]
    assert "status: interrupted" in (folder / "summary.md").read_text()
    assert not list(run_dirs.glob("specdeck-*"))


def test_a_running_record_of_a_live_process_is_left_alone(tmp_path):
    from ipc.records import mark_interrupted

    recorder = RunRecorder(
        tmp_path, target_model="t", draft_model="d", placement={}, mode="split", options={}
    )
    assert mark_interrupted(tmp_path) == []
    assert json.loads((recorder.folder / "run.json").read_text())["status"] == "running"
    recorder.stopped()
    assert not (recorder.folder / ".owner").exists()


def limit_file_size(limit_bytes: int):
    """For a child process: writes past `limit_bytes` fail (EFBIG), as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@pytest.mark.parametrize("mode", ["split", "inprocess"])
def test_a_record_that_cannot_grow_ends_the_run_with_one_line(tiny_pair, tmp_path, run_dirs, mode):
    data = tmp_path / "data"
    proc = start_cli(
        tiny_pair, run_dirs, "--mode", mode, "--max-new-tokens", "900",
        preexec_fn=limit_file_size(16_000),
    )  # fmt: skip
    out, err = proc.communicate(timeout=180)
    folder = only_record(data)
    assert proc.returncode == 1, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"specdeck: file too large writing {folder}/steps.jsonl")
    lines = (folder / "steps.jsonl").read_text().splitlines(keepends=True)
    assert lines and all(line.endswith("\n") and json.loads(line) for line in lines)
    assert json.loads((folder / "run.json").read_text())["run_id"] == folder.name


def test_a_full_disk_is_named_in_one_line():
    target = _AppendOnly(Path("/dev/full"))
    with pytest.raises(RecordWriteError) as caught:
        target.append("{}\n")
    assert str(caught.value) == "no space left on device writing /dev/full"


def test_a_data_dir_that_cannot_be_written_is_refused_before_anything_starts(tiny_pair, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {**os.environ, "SPECDECK_DATA_DIR": str(blocker / "data")}
    for mode in ("split", "inprocess"):
        done = subprocess.run(
            [
                sys.executable, "-m", "app.cli", "run", "--mode", mode,
                "--target-model", str(tiny_pair[0]), "--draft-model", str(tiny_pair[1]),
            ],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("specdeck: cannot keep run records in ")
        assert len(done.stderr.strip().splitlines()) == 1
