"""The host CPU and system memory through psutil."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import psutil

from backends.base import Backend, Device, Sample

# sensors_temperatures() keys of CPU package sensors, most specific first
_CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "acpitz")
_FIRST_READING_S = 0.1  # cpu_percent needs an interval; the first reading waits this long


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def resident_bytes(pid: int) -> int | None:
    """The host memory a process holds (its resident set size), or None once it has gone.

    What a process uses of a device that runs work on the host (the CPU, a simulated GPU):
    no vendor tool accounts it per device, as NVML does on a real GPU.
    """
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class CpuBackend(Backend):
    """One device, `cpu`: system RAM, overall CPU utilization and package temperature."""

    name = "cpu"

    def __init__(self) -> None:
        self._sensor: str | None = None
        self._primed = False

    def discover(self) -> list[Device]:
        """The CPU as one device."""
        self._sensor = self._find_sensor()
        return [
            Device(
                id="cpu",
                backend="cpu",
                name=cpu_name(),
                memory_total_bytes=psutil.virtual_memory().total,
            )
        ]

    @staticmethod
    def _find_sensor() -> str | None:
        reader = getattr(psutil, "sensors_temperatures", None)
        if reader is None:  # not on this platform
            return None
        try:
            found = reader()
        except Exception:  # an unreadable hwmon entry must not hide the CPU
            return None
        return next((key for key in _CPU_SENSORS if found.get(key)), None)

    def sample(self, device: Device) -> Sample:
        """One reading; the first one blocks briefly so utilization is a real figure."""
        if self._primed:
            utilization = psutil.cpu_percent(interval=None)
        else:
            utilization = psutil.cpu_percent(interval=_FIRST_READING_S)
            self._primed = True
        memory = psutil.virtual_memory()
        return Sample(
            device_id=device.id,
            time=time.time(),
            memory_used_bytes=memory.total - memory.available,
            memory_total_bytes=memory.total,
            utilization_percent=float(utilization),
            temperature_c=self._temperature(),
        )

    def _temperature(self) -> float | None:
        if self._sensor is None:
            return None
        try:
            readings = psutil.sensors_temperatures().get(self._sensor) or []
        except Exception:
            return None
        package = [r.current for r in readings if r.label.lower().startswith(("package", "tctl"))]
        values = package or [r.current for r in readings]
        return float(max(values)) if values else None
