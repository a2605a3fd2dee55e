"""Per-device utilization and memory history, one line of two sparklines per device."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from app.widgets.spark import spark_text
from backends.base import Device, Sample

ID_WIDTH = 11


def utilization_series(samples: Sequence[Sample]) -> list[float]:
    """Utilization percentages of the samples that report it."""
    return [s.utilization_percent for s in samples if s.utilization_percent is not None]


def memory_series(samples: Sequence[Sample]) -> list[float]:
    """Memory used as a percentage of total, for the samples that report both."""
    return [
        100.0 * s.memory_used_bytes / s.memory_total_bytes
        for s in samples
        if s.memory_used_bytes is not None and s.memory_total_bytes
    ]


class HistoryRow(Widget):
    """One device: its id, utilization and memory over time (0–100 %)."""

    DEFAULT_CSS = "HistoryRow { height: 1; }"

    utilization: reactive[tuple[float, ...]] = reactive(())
    memory: reactive[tuple[float, ...]] = reactive(())

    def __init__(self, device_id: str, **kw) -> None:
        super().__init__(**kw)
        self.device_id = device_id

    def render(self) -> str:
        width = max(0, (self.size.width - ID_WIDTH - 2) // 2)
        util = spark_text(list(self.utilization), width, 100.0)
        mem = spark_text(list(self.memory), width, 100.0)
        name = self.device_id[:ID_WIDTH].ljust(ID_WIDTH)
        return f"{name} [$chart-utilization]{util}[/] [$chart-memory]{mem}[/]"


class DeviceHistory(VerticalScroll):
    """Utilization and memory over the sampler's history window, per device."""

    def __init__(self, devices: Sequence[Device], **kw) -> None:
        super().__init__(**kw)
        self.devices = tuple(devices)

    def compose(self) -> ComposeResult:
        yield Static(f"{'device':{ID_WIDTH}} util %  ·  memory %", classes="history-head")
        for device in self.devices:
            yield HistoryRow(device.id)

    def show(self, device_id: str, samples: Sequence[Sample]) -> None:
        """Draw one device's history (oldest first)."""
        for row in self.query(HistoryRow):
            if row.device_id == device_id:
                row.utilization = tuple(utilization_series(samples))
                row.memory = tuple(memory_series(samples))
