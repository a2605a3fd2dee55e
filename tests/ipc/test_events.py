"""The run handle's interface as the dashboard and the command line hold it."""

from ipc.events import RunControl
from ipc.runner import RunHandle


def test_a_run_handle_is_the_run_control_its_watchers_hold(tmp_path):
    handle = RunHandle("r1", tmp_path)
    assert isinstance(handle, RunControl)
    assert not handle.finished and handle.pids == {} and handle.wait(0) is None
