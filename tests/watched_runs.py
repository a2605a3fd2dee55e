"""Runs in processes of their own, for the tests that watch them from others."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dirs(monkeypatch):
    """A private temp dir, short enough for sockets, where this test's run dirs go: the runs'
    processes and the watchers look in the same one."""
    folder = Path(tempfile.mkdtemp(prefix="sdw-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def python_process(*argv: str, stdin: bool = False) -> subprocess.Popen:
    """`python ARGV...` from the project's root, its output read as text."""
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def specdeck_run(pair, *, k: int, max_new_tokens: int) -> subprocess.Popen:
    """`specdeck run --json` of a model pair on the CPU, split over two daemons."""
    return python_process(
        "-m", "app.cli", "run", "--target-model", str(pair[0]), "--draft-model", str(pair[1]),
        "--prompt", "def f(x):", "--k", str(k), "--max-new-tokens", str(max_new_tokens),
        "--mode", "split", "--json",
    )  # fmt: skip


def ended(process: subprocess.Popen) -> None:
    """Kill a process the test left running, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()
