"""Per-device utilization and memory history, one line of two sparklines per device, read
from the device sampler on the widget's own timer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget

from app.widgets.figures import MUTED
from app.widgets.spark import spark_text
from backends.base import Sample

if TYPE_CHECKING:
    from backends.sampler import DeviceSampler

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


class HistoryChart(Widget):
    """A head line, then one line a device: its id, utilization and memory (0–100 %)."""

    DEFAULT_CSS = "HistoryChart { height: auto; }"

    def __init__(self, device_ids: Sequence[str], **kw) -> None:
        super().__init__(**kw)
        # device id -> (utilization, memory) series, oldest first
        self.series: dict[str, tuple[list[float], list[float]]] = {d: ([], []) for d in device_ids}

    def render(self) -> str:
        width = max(0, (self.content_size.width - ID_WIDTH - 2) // 2)
        lines = [f"[{MUTED}]{'device':{ID_WIDTH}} util %  ·  memory %[/]"]
        for device_id, (util, mem) in self.series.items():
            name = device_id[:ID_WIDTH].ljust(ID_WIDTH)
            lines.append(
                f"{name} [$chart-utilization]{spark_text(util, width, 100.0)}[/] "
                f"[$chart-memory]{spark_text(mem, width, 100.0)}[/]"
            )
        return "\n".join(lines)

    def show(self, device_id: str, samples: Sequence[Sample]) -> None:
        """Draw one device's history (oldest first)."""
        self.series[device_id] = (utilization_series(samples), memory_series(samples))
        self.refresh()

    def show_devices(self, device_ids: Sequence[str]) -> None:
        """One line per device there now: a gone device's line goes, a new one's begins."""
        self.series = {d: self.series.get(d, ([], [])) for d in device_ids}
        self.refresh(layout=True)


class SamplerDevicesChanged(Message):
    """The sampler's device list changed (GPUs discovered after the first frame, a device gone
    or come); posted from the sampler thread, which post_message allows."""


def follow_sampler_devices(widget: Widget, sampler: DeviceSampler) -> None:
    """Post SamplerDevicesChanged to `widget` whenever the sampler's device list changes."""
    sampler.on_devices_changed(lambda: widget.post_message(SamplerDevicesChanged()))


class DeviceHistory(VerticalScroll):
    """Utilization and memory over the sampler's history window, per device; it reads the
    sampler every `refresh_s` and follows the devices there now."""

    def __init__(self, sampler: DeviceSampler, refresh_s: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.sampler = sampler
        self.refresh_s = refresh_s
        self.inventory = sampler.inventory  # the devices it shows

    def compose(self) -> ComposeResult:
        yield HistoryChart([d.id for d in self.inventory.devices])

    def on_mount(self) -> None:
        self.refresh_history()
        self.set_interval(self.refresh_s, self.refresh_history)
        follow_sampler_devices(self, self.sampler)

    def on_sampler_devices_changed(self, _: SamplerDevicesChanged) -> None:
        self.refresh_history()  # a new device's line at once, not at the next tick

    def refresh_history(self) -> None:
        """Draw every device's history as the sampler holds it now."""
        chart = self.query_one(HistoryChart)
        if self.sampler.inventory is not self.inventory:
            self.inventory = self.sampler.inventory
            chart.show_devices([d.id for d in self.inventory.devices])
        for device in self.inventory.devices:
            chart.show(device.id, self.sampler.history(device.id))
