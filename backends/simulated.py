"""Simulated GPUs for `--simulate cuda:2,hip:1`: plausible telemetry that moves smoothly."""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from backends.base import PHASES, Backend, BadSimulateSpec, Device, DeviceGone, Sample


@dataclass(frozen=True)
class SimulatedModel:
    """The card a simulated device imitates."""

    name: str
    memory_total_bytes: int
    power_limit_watts: float
    idle_watts: float


MODELS = {
    "cuda": SimulatedModel("Simulated NVIDIA H100 80GB HBM3", 81_559 * 2**20, 700.0, 72.0),
    "hip": SimulatedModel("Simulated AMD Instinct MI300X", 196_592 * 2**20, 750.0, 140.0),
}

# how busy a device gets in each phase of a run (0..1), and how much of its memory is in use
_ACTIVITY = {"idle": 0.02, "load": 0.15, "prefill": 0.97, "decode": 0.72}
_MEMORY_SHARE = {"idle": 0.0, "load": 0.35, "prefill": 0.42, "decode": 0.45}
_ACTIVITY_TAU_S = 1.5  # utilization and power follow the phase within a couple of seconds
_THERMAL_TAU_S = 25.0  # temperature follows much more slowly
_IDLE_MEMORY_BYTES = 600 * 2**20
MAX_SIMULATED = 64  # per vendor; more is a typo, not an experiment


def parse_simulate_spec(spec: str) -> tuple[tuple[str, int], ...]:
    """`cuda:2,hip:1` -> (("cuda", 2), ("hip", 1)); anything else raises BadSimulateSpec."""
    hint = "expected e.g. cuda:2,hip:1"
    counts: dict[str, int] = {}
    if not spec.strip():
        raise BadSimulateSpec(f"bad --simulate spec {spec!r}: empty ({hint})")
    for part in spec.split(","):
        vendor, sep, count = (piece.strip() for piece in part.partition(":"))
        if not part.strip():
            raise BadSimulateSpec(f"bad --simulate spec {spec!r}: empty part ({hint})")
        if vendor not in MODELS:
            known = ", ".join(MODELS)
            raise BadSimulateSpec(
                f"bad --simulate spec {spec!r}: unknown vendor {vendor!r} (known: {known})"
            )
        if not sep or not count.isdigit():
            raise BadSimulateSpec(
                f"bad --simulate spec {spec!r}: {part.strip()!r} needs a device count ({hint})"
            )
        if not 1 <= int(count) <= MAX_SIMULATED:
            raise BadSimulateSpec(
                f"bad --simulate spec {spec!r}: {vendor} count must be 1 to {MAX_SIMULATED}"
            )
        if vendor in counts:
            raise BadSimulateSpec(f"bad --simulate spec {spec!r}: {vendor} is given twice")
        counts[vendor] = int(count)
    return tuple(counts.items())


class _DeviceState:
    """What one simulated device is doing right now; moves toward the current phase."""

    def __init__(self, device_id: str, now: float) -> None:
        seed = zlib.crc32(device_id.encode())
        self.offset = (seed % 1000) / 1000 * 2 * math.pi  # each device wobbles differently
        self.base_memory = _IDLE_MEMORY_BYTES + (seed % 7) * 64 * 2**20
        self.activity = _ACTIVITY["idle"]
        self.memory_share = 0.0
        self.heat = 0.0
        self.last = now

    def advance(self, now: float, phase: str) -> None:
        dt = max(0.0, now - self.last)
        self.last = now
        fast = 1 - math.exp(-dt / _ACTIVITY_TAU_S)
        slow = 1 - math.exp(-dt / _THERMAL_TAU_S)
        self.activity += (_ACTIVITY[phase] - self.activity) * fast
        self.memory_share += (_MEMORY_SHARE[phase] - self.memory_share) * fast
        self.heat += (self.activity - self.heat) * slow


class SimulatedBackend(Backend):
    """Devices `sim-cuda:N` / `sim-hip:N` whose telemetry drifts and follows the run phase."""

    name = "simulated"

    def __init__(
        self, counts: tuple[tuple[str, int], ...], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._counts = counts
        self._clock = clock
        self._phase = "idle"
        self._states: dict[str, _DeviceState] = {}
        self._present: dict[str, Device] = {}  # the devices plugged in now, in order
        self._lock = threading.Lock()

    def discover(self) -> list[Device]:
        """The devices the spec asked for, in spec order."""
        with self._lock:
            self._states.clear()
            self._present.clear()
            for vendor, count in self._counts:
                for index in range(count):
                    self._add(vendor, index)
            return list(self._present.values())

    def _add(self, vendor: str, index: int) -> Device:
        model = MODELS[vendor]
        device = Device(
            id=f"sim-{vendor}:{index}",
            backend=vendor,
            name=model.name,
            index=index,
            simulated=True,
            memory_total_bytes=model.memory_total_bytes,
        )
        self._states[device.id] = _DeviceState(device.id, self._clock())
        self._present[device.id] = device
        return device

    def rescan(self) -> list[Device]:
        """The simulated devices plugged in now: vendors in spec order, then by index."""
        rank = {vendor: i for i, (vendor, _) in enumerate(self._counts)}
        with self._lock:
            present = list(self._present.values())
        return sorted(present, key=lambda d: (rank.get(d.backend, len(rank)), d.backend, d.index))

    def unplug(self, device_id: str) -> None:
        """Take a device away, as a GPU that falls off the bus: its readings end."""
        with self._lock:
            if self._present.pop(device_id, None) is None:
                raise ValueError(f"no simulated device {device_id!r} is plugged in")
            del self._states[device_id]

    def plug(self, vendor: str) -> Device:
        """Add one more device of a vendor (the next free index), as a hot-plugged GPU."""
        if vendor not in MODELS:
            raise ValueError(f"unknown vendor {vendor!r} (known: {', '.join(MODELS)})")
        with self._lock:
            taken = {d.index for d in self._present.values() if d.backend == vendor}
            return self._add(vendor, next(i for i in range(len(taken) + 1) if i not in taken))

    def set_phase(self, phase: str) -> None:
        """What the run is doing; utilization, memory and power move toward that phase."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        with self._lock:
            now = self._clock()
            for state in self._states.values():
                state.advance(now, self._phase)  # settle the old phase up to now
            self._phase = phase

    def sample(self, device: Device) -> Sample:
        """One reading of smooth, slightly wobbling telemetry."""
        model = MODELS[device.backend]
        with self._lock:
            state = self._states.get(device.id)
            if state is None:
                raise DeviceGone(f"{device.id} has been unplugged")
            now = self._clock()
            state.advance(now, self._phase)
            activity, share, heat = state.activity, state.memory_share, state.heat
        wobble = (
            math.sin(now / 3.1 + state.offset) * 0.6 + math.sin(now / 1.3 + 2 * state.offset) * 0.4
        )
        utilization = min(100.0, max(0.0, 100 * activity + 3 * wobble * (0.3 + activity)))
        used = state.base_memory + share * model.memory_total_bytes + 8 * 2**20 * wobble
        power = model.idle_watts + (0.92 * model.power_limit_watts - model.idle_watts) * activity
        return Sample(
            device_id=device.id,
            time=time.time(),
            memory_used_bytes=int(min(used, model.memory_total_bytes)),
            memory_total_bytes=model.memory_total_bytes,
            utilization_percent=round(utilization, 1),
            power_watts=round(power + 4 * wobble, 1),
            power_limit_watts=model.power_limit_watts,
            temperature_c=round(31 + 45 * heat + 0.5 * wobble, 1),
        )
