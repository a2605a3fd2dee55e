"""The workload's gauge: prompt i of N, a bar, and the ETA (hidden for a run of one prompt)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from app.progress import WorkloadProgress

BAR_STEPS = 1000  # the bar's total: fractions of the workload, to a thousandth


class WorkloadGauge(Vertical):
    """Where a workload stands, as the runner reckons it (`app.progress.WorkloadProgress`)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.progress: WorkloadProgress | None = None
        self.display = False

    def compose(self) -> ComposeResult:
        yield Static("", classes="gauge-label")
        yield ProgressBar(total=BAR_STEPS, show_eta=False, id="workload-bar")

    def show(self, progress: WorkloadProgress | None) -> None:
        """A workload's progress, or None to hide the gauge (a run of one prompt)."""
        self.progress = progress
        self.display = progress is not None
        if progress is None:
            return
        self.query_one(".gauge-label", Static).update(f"{progress.label} · {progress.detail}")
        self.query_one(ProgressBar).update(progress=round(progress.fraction * BAR_STEPS))
