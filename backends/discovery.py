"""Find every device once: CUDA through NVML, HIP through amdsmi, the CPU, simulated ones."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from backends.amdsmi import AmdSmiBackend
from backends.base import Backend, BackendUnavailable, Device, Sample
from backends.cpu import CpuBackend
from backends.nvml import NvmlBackend
from backends.simulated import SimulatedBackend, parse_simulate_spec


@dataclass(frozen=True)
class Unavailable:
    """A backend whose devices are absent, and why, in one line."""

    backend: str
    reason: str


@runtime_checkable
class DeviceInventory(Protocol):
    """What a run's check reads of an inventory (`Inventory` fills it in; tests fake it)."""

    devices: tuple[Device, ...]

    def get(self, device_id: str) -> Device | None:
        """The device with this id, or None."""
        ...

    def sample(self, device: Device) -> Sample:
        """One reading of one device."""
        ...


@dataclass(frozen=True)
class Inventory:
    """The devices found, the backends that could not be used, and who samples what."""

    devices: tuple[Device, ...]
    unavailable: tuple[Unavailable, ...] = ()
    owners: Mapping[str, Backend] = field(default_factory=dict, repr=False, compare=False)
    backends: tuple[Backend, ...] = field(default=(), repr=False, compare=False)

    def get(self, device_id: str) -> Device | None:
        """The device with this id, or None."""
        return next((d for d in self.devices if d.id == device_id), None)

    def sample(self, device: Device) -> Sample:
        """One reading of one device from the backend that found it."""
        return self.owners[device.id].sample(device)

    def has_gone(self, device: Device, error: Exception) -> bool:
        """Whether an error sampling `device` means the device has left."""
        owner = self.owners.get(device.id)
        return owner is not None and owner.has_gone(error)

    def without(self, device_ids: Collection[str]) -> Inventory:
        """This inventory less the devices that have gone (self when none have)."""
        gone = set(device_ids) & set(self.owners)
        if not gone:
            return self
        return replace(
            self,
            devices=tuple(d for d in self.devices if d.id not in gone),
            owners={i: b for i, b in self.owners.items() if i not in gone},
        )

    def rescanned(self) -> Inventory:
        """The devices there now, per backend that can rescan (self when nothing changed)."""
        devices, owners = list(self.devices), dict(self.owners)
        for backend in self.backends:
            found = backend.rescan()
            if found is not None:
                devices = _follow_backend(devices, owners, backend, found)
        if tuple(devices) == self.devices:
            return self
        return replace(self, devices=tuple(devices), owners={d.id: owners[d.id] for d in devices})

    def after(self, first: Inventory) -> Inventory:
        """`first`'s devices and backends ahead of these: GPUs discovered late still come
        before the CPU and simulated devices."""
        return Inventory(
            devices=first.devices + self.devices,
            unavailable=first.unavailable + self.unavailable,
            owners={**first.owners, **self.owners},
            backends=first.backends + self.backends,
        )

    def set_phase(self, phase: str) -> None:
        """Tell simulated devices what the run is doing, so their telemetry follows it (a
        cluster's nodes pass it on to theirs)."""
        for backend in self.backends:
            follow = getattr(backend, "set_phase", None)
            if follow is not None:
                follow(phase)

    def close(self) -> None:
        """Release every vendor library."""
        for backend in self.backends:
            backend.close()


def _follow_backend(
    devices: list[Device], owners: dict[str, Backend], backend: Backend, found: list[Device]
) -> list[Device]:
    """`devices` with `backend`'s share replaced by what it found now, in its order, where its
    share was (at the end if it had none)."""
    first = next((i for i, d in enumerate(devices) if owners.get(d.id) is backend), len(devices))
    others = [d for d in devices if owners.get(d.id) is not backend]
    at = sum(1 for d in devices[:first] if owners.get(d.id) is not backend)
    for device in found:
        owners[device.id] = backend
    return others[:at] + list(found) + others[at:]


def vendor_backends() -> tuple[Backend, ...]:
    """The GPU vendors' backends, in the order their devices are listed."""
    return (NvmlBackend(), AmdSmiBackend())


def default_backends() -> tuple[Backend, ...]:
    """The real backends, in the order their devices are listed."""
    return (*vendor_backends(), CpuBackend())


def discover(simulate: str | None = None, backends: Sequence[Backend] | None = None) -> Inventory:
    """Every device, CUDA then HIP then the CPU then simulated; a bad spec raises first."""
    counts = parse_simulate_spec(simulate) if simulate is not None else ()
    chosen = list(default_backends() if backends is None else backends)
    if counts:
        chosen.append(SimulatedBackend(counts))
    devices: list[Device] = []
    unavailable: list[Unavailable] = []
    owners: dict[str, Backend] = {}
    started: list[Backend] = []
    for backend in chosen:
        try:
            found = backend.discover()
        except BackendUnavailable as exc:
            unavailable.append(Unavailable(backend.name, str(exc)))
            continue
        except Exception as exc:  # a vendor library failing in a new way must not stop specdeck
            backend.close()
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            unavailable.append(Unavailable(backend.name, f"device discovery failed: {reason}"))
            continue
        started.append(backend)
        for device in found:
            devices.append(device)
            owners[device.id] = backend
    return Inventory(
        devices=tuple(devices),
        unavailable=tuple(unavailable),
        owners=owners,
        backends=tuple(started),
    )
