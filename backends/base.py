"""Devices, telemetry samples and the interface every vendor backend fills in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

BACKENDS = ("cuda", "hip", "cpu")
PHASES = ("idle", "load", "prefill", "decode")


class BackendUnavailable(Exception):
    """A vendor library is missing or broken; the message is one line for the user."""


class BadSimulateSpec(ValueError):
    """A `--simulate` spec that cannot be parsed; the message is one line for the user."""


class DeviceGone(Exception):
    """A discovered device has left (fell off the bus, unplugged); it will not answer again."""


@dataclass(frozen=True)
class Device:
    """Static facts about one device, as discovered."""

    id: str  # "cuda:0", "hip:1", "cpu"; simulated: "sim-cuda:0"
    backend: str  # one of BACKENDS
    name: str
    index: int | None = None  # vendor tool's index (NVML / amdsmi order); None for the CPU
    simulated: bool = False
    memory_total_bytes: int | None = None
    pci_bus_id: str | None = None
    uuid: str | None = None
    # what the runtime's visibility variable accepts (CUDA: UUID; HIP: ROCr UUID or index)
    visible_id: str | None = None
    host: str | None = None  # the cluster node it sits on (`--cluster`); None: this machine

    @property
    def runs_on_host(self) -> bool:
        """Whether work placed here runs on the host CPU: the CPU itself, or a simulated GPU."""
        return self.simulated or self.backend == "cpu"


@dataclass(frozen=True)
class ProcessInfo:
    """One process using a device."""

    pid: int
    name: str | None
    memory_bytes: int | None


@dataclass(frozen=True)
class Sample:
    """One telemetry reading of one device; a metric not reported is None."""

    device_id: str
    time: float
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_percent: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_c: float | None = None
    processes: tuple[ProcessInfo, ...] = field(default_factory=tuple)
    phase: str = "idle"


class Backend(ABC):
    """One vendor's device discovery and telemetry."""

    name: str  # one of BACKENDS

    @abstractmethod
    def discover(self) -> list[Device]:
        """Return this backend's devices; raise BackendUnavailable with a reason if it cannot."""

    @abstractmethod
    def sample(self, device: Device) -> Sample:
        """Read one snapshot of a device's telemetry (phase left as 'idle')."""

    def has_gone(self, error: Exception) -> bool:
        """Whether an error from sample() means the device has left, not a passing failure."""
        return isinstance(error, DeviceGone)

    def rescan(self) -> list[Device] | None:
        """The devices there now, from a backend that can tell cheaply; None: it cannot."""
        return None

    def close(self) -> None:
        """Release the vendor library."""
