"""The dashboard in a real terminal (tmux): place both roles with keys, launch, quit."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


class Tmux:
    """One private tmux server running one window."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "deck")

    def keys(self, *keys: str) -> None:
        for key in keys:  # one at a time: a burst can merge an arrow's escape with a letter
            self("send-keys", "-t", "deck", key)
            time.sleep(0.15)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.screen())
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{self.screen()}")


def test_keys_place_both_roles_launch_and_quit_leaves_no_daemon(tmp_path):
    tmux = Tmux(f"specdeck-test-{os.getpid()}")
    env = {
        "SPECDECK_CONFIG": str(tmp_path / "config.toml"),
        "SPECDECK_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    # COLUMNS/LINES inherited from the test runner would override the terminal's real size
    command = (
        f"cd {ROOT} && env -u COLUMNS -u LINES {exports} "
        f"{sys.executable} -m app.cli --simulate cuda:2,hip:1"
    )
    tmux("new-session", "-d", "-s", "deck", "-x", "160", "-y", "48", command)
    try:
        tmux("resize-window", "-t", "deck", "-x", "160", "-y", "48")
        shell = psutil.Process(int(tmux("display", "-p", "-t", "deck", "#{pane_pid}").strip()))
        tmux.wait_for(r"sim-hip:0", timeout=20)
        tmux.wait_for(r"tokenizers match", timeout=20)
        # each key waits for what it shows: a focused card has a double border
        tmux.keys("t", "c")
        tmux.wait_for(r"╔═ cpu ", timeout=20)
        tmux.keys("Right")
        tmux.wait_for(r"╔═ sim-cuda:0 ", timeout=20)
        tmux.keys("Enter")
        tmux.wait_for(r"TARGET\s+║", timeout=20)
        tmux.keys("d", "Right")
        tmux.wait_for(r"╔═ sim-cuda:1 ", timeout=20)
        tmux.keys("Right")
        tmux.wait_for(r"╔═ sim-hip:0 ", timeout=20)
        tmux.keys("Enter")
        tmux.wait_for(r"DRAFT\s+║", timeout=20)  # the draft sits on the focused card
        tmux.keys("l")
        tmux.wait_for(r"mean AL \d+\.\d\d", timeout=60)
        daemons = [p for p in shell.children(recursive=True) if "daemon" in " ".join(p.cmdline())]
        assert daemons, "no daemon processes were started"
        tmux.keys("C-q")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and shell.is_running() and shell.status() != "zombie":
            time.sleep(0.2)
        left = [p.pid for p in daemons if p.is_running() and p.status() != "zombie"]
        assert not left, f"daemons left after quitting: {left}"
    finally:
        tmux("kill-server")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_quits_the_dashboard_as_q_does(tmp_path, sig, status):
    tmux = Tmux(f"specdeck-test-{os.getpid()}")
    data = tmp_path / "data"
    run_dirs = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # short: sockets go inside
    env = {
        "SPECDECK_CONFIG": str(tmp_path / "config.toml"),
        "SPECDECK_DATA_DIR": str(data),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(run_dirs),
    }
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    exit_file = tmp_path / "exit-status"
    command = (
        f"cd {ROOT} && env -u COLUMNS -u LINES {exports} "
        f"{sys.executable} -m app.cli --simulate cuda:1; echo $? > {exit_file}; sleep 60"
    )
    tmux("new-session", "-d", "-s", "deck", "-x", "160", "-y", "48", command)
    try:
        tmux("resize-window", "-t", "deck", "-x", "160", "-y", "48")
        shell = psutil.Process(int(tmux("display", "-p", "-t", "deck", "#{pane_pid}").strip()))
        tmux.wait_for(r"tokenizers match", timeout=20)
        (specdeck,) = [p for p in shell.children() if "app.cli" in " ".join(p.cmdline())]
        tmux.keys("t", "c", "Enter")  # both roles on the first card: the CPU, in-process
        tmux.wait_for(r"TARGET\s+║", timeout=20)
        tmux.keys("d", "Enter")
        tmux.wait_for(r"TARGET\s+DRAFT\s+║", timeout=20)
        tmux.keys("l")
        # the record exists from the launch on; the daemons are still starting (importing
        # torch takes them seconds), so the run is surely going when the signal lands
        deadline = time.monotonic() + 20
        while not list(data.glob("runs/*/run.json")):
            assert time.monotonic() < deadline, tmux.screen()
            time.sleep(0.02)
        daemons = specdeck.children(recursive=True)
        specdeck.send_signal(sig)
        deadline = time.monotonic() + 30
        while not exit_file.exists() or not exit_file.read_text().strip():
            assert time.monotonic() < deadline, tmux.screen()
            time.sleep(0.1)
        assert int(exit_file.read_text()) == status
        (record,) = data.glob("runs/*/run.json")
        assert json.loads(record.read_text())["status"] == "stopped"
        _, left = psutil.wait_procs(daemons, timeout=10)
        assert not left, f"daemons left after the signal: {left}"
        assert not list(run_dirs.glob("specdeck-*"))
    finally:
        tmux("kill-server")
        shutil.rmtree(run_dirs, ignore_errors=True)


def test_the_dashboard_ends_when_its_terminal_goes_away(tmp_path):
    tmux = Tmux(f"specdeck-test-{os.getpid()}")
    env = {
        "SPECDECK_CONFIG": str(tmp_path / "config.toml"),
        "SPECDECK_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
    }
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    command = f"cd {ROOT} && env -u COLUMNS -u LINES {exports} {sys.executable} -m app.cli"
    tmux("new-session", "-d", "-s", "deck", "-x", "160", "-y", "48", command)
    try:
        shell = psutil.Process(int(tmux("display", "-p", "-t", "deck", "#{pane_pid}").strip()))
        tmux.wait_for(r"tokenizers match", timeout=20)
        # the shell may have exec'd the dashboard as its last command
        (specdeck,) = [p for p in (shell, *shell.children()) if "app.cli" in " ".join(p.cmdline())]
    finally:
        tmux("kill-server")  # the terminal closes: SIGHUP, then writes to a dead tty
    # a quit that hangs on the dead terminal is ended by the signal's deadline (30 s)
    _, left = psutil.wait_procs([specdeck], timeout=60)
    assert not left, "the dashboard outlived its terminal"
