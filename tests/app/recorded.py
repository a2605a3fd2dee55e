"""Run records for tests, written by the one writer (ipc.records.RunRecorder)."""

from __future__ import annotations

from ipc.records import RunRecorder


def new_record(data_dir, *, target: str = "cpu", draft: str = "cpu", **options) -> RunRecorder:
    """An open record of models `t` <- `d`, split when the draft has a device of its own."""
    return RunRecorder(
        data_dir,
        target_model="t",
        draft_model="d",
        placement={"target": [target], "draft": draft},
        mode="inprocess" if target == draft else "split",
        options=options,
    )
