"""CUDA devices and their telemetry through NVML (the `pynvml` module of nvidia-ml-py)."""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import psutil

from backends.base import Backend, BackendUnavailable, Device, ProcessInfo, Sample

LIBRARY_FILE = "libnvidia-ml.so.1"

# NVML errors that mean "this device or driver does not report that", not "something broke"
_NOT_REPORTED_ERRORS = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_NO_DATA",
    "NVML_ERROR_NOT_READY",
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
)
_NOT_AVAILABLE_ULL = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE_ulonglong


def _text(value: str | bytes) -> str:
    """NVML strings come back as str from recent pynvml, as bytes from older ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def nvml_library_loads() -> bool:
    """Whether the NVML library loads; asked before importing pynvml, which takes ~10 ms to
    import and could only fail at nvmlInit on a machine without the NVIDIA driver."""
    if not sys.platform.startswith("linux"):
        return True  # pynvml looks in more places on Windows; let it
    try:
        ctypes.CDLL(LIBRARY_FILE)  # what pynvml itself loads on Linux
    except OSError:
        return False
    return True


class ProcessNames:
    """Process names through psutil, cached per pid while that pid lives and NVML lists it."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}

    def lookup(self, pids: Iterable[int]) -> dict[int, str | None]:
        """Names of these pids; a pid that has exited or is hidden from us gets None."""
        names: dict[int, str | None] = {}
        for pid in pids:
            # pid_exists is one kill(pid, 0); reading /proc for the name costs far more
            if self._names.get(pid) is not None and psutil.pid_exists(pid):
                names[pid] = self._names[pid]
                continue
            try:
                names[pid] = psutil.Process(pid).name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                names[pid] = None
        # forget pids NVML no longer lists, so a reused pid is looked up again
        self._names = names
        return names


class NvmlBackend(Backend):
    """NVIDIA GPUs, by NVML index; every NVML call goes through `_query`."""

    name = "cuda"

    def __init__(self, library: ModuleType | None = None) -> None:
        self._nv = library
        self._handles: dict[str, Any] = {}
        self._not_reported: frozenset[int] = frozenset()
        self._names = ProcessNames()
        self._started = False

    def _start(self) -> ModuleType:
        if self._started:
            return self._nv
        if self._nv is None:
            if "pynvml" not in sys.modules and not nvml_library_loads():
                raise BackendUnavailable(f"NVML library not found ({LIBRARY_FILE})")
            try:
                import pynvml
            except Exception as exc:  # absent or broken bindings must not stop specdeck
                raise BackendUnavailable(
                    f"nvidia-ml-py (pynvml) cannot be imported: {exc}"
                ) from None
            self._nv = pynvml
        nv = self._nv
        try:
            nv.nvmlInit()
        except Exception as exc:
            raise BackendUnavailable(self._init_reason(exc)) from None
        self._not_reported = frozenset(
            getattr(nv, name) for name in _NOT_REPORTED_ERRORS if hasattr(nv, name)
        )
        self._started = True
        return nv

    def _init_reason(self, exc: Exception) -> str:
        nv = self._nv
        code = getattr(exc, "value", None)
        if code == getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", 12) or isinstance(exc, OSError):
            return f"NVML library not found ({LIBRARY_FILE})"
        if code == getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
            return "NVIDIA driver not loaded (NVML)"
        if code == getattr(nv, "NVML_ERROR_NO_PERMISSION", 4):
            return "no permission to use NVML"
        return "NVML could not start: " + " ".join(str(exc).split())

    def _query(self, function: str, *args: Any) -> Any:
        """Call one NVML function; a metric that is not reported comes back as None."""
        fn = getattr(self._nv, function, None)
        if fn is None:  # older nvidia-ml-py without this function
            return None
        try:
            return fn(*args)
        except self._nv.NVMLError as exc:
            if getattr(exc, "value", None) in self._not_reported:
                return None
            raise
        except getattr(self._nv, "NVMLLibraryMismatchError", ()):
            return None

    def has_gone(self, error: Exception) -> bool:
        """A GPU that fell off the bus answers every call with NVML_ERROR_GPU_IS_LOST."""
        if super().has_gone(error):
            return True
        lost = getattr(self._nv, "NVML_ERROR_GPU_IS_LOST", 15)
        nvml_error = getattr(self._nv, "NVMLError", ())
        return isinstance(error, nvml_error) and getattr(error, "value", None) == lost

    def discover(self) -> list[Device]:
        """NVML's GPUs in NVML index order (PCI bus order)."""
        nv = self._start()
        devices = []
        count = self._query("nvmlDeviceGetCount") or 0
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except nv.NVMLError:  # a lost or forbidden GPU is not one we can use
                continue
            device_id = f"cuda:{index}"
            self._handles[device_id] = handle
            name = self._query("nvmlDeviceGetName", handle)
            uuid = self._query("nvmlDeviceGetUUID", handle)
            pci = self._query("nvmlDeviceGetPciInfo", handle)
            memory = self._query("nvmlDeviceGetMemoryInfo", handle)
            devices.append(
                Device(
                    id=device_id,
                    backend="cuda",
                    name=_text(name) if name else f"NVIDIA GPU {index}",
                    index=index,
                    memory_total_bytes=int(memory.total) if memory is not None else None,
                    pci_bus_id=_text(pci.busId) if pci is not None else None,
                    uuid=_text(uuid) if uuid else None,
                    visible_id=_text(uuid) if uuid else str(index),
                )
            )
        return devices

    def sample(self, device: Device) -> Sample:
        """One reading: memory, utilization, power, temperature and processes."""
        handle = self._handles[device.id]
        memory = self._query("nvmlDeviceGetMemoryInfo", handle)
        rates = self._query("nvmlDeviceGetUtilizationRates", handle)
        power_mw = self._query("nvmlDeviceGetPowerUsage", handle)
        limit_mw = self._query("nvmlDeviceGetEnforcedPowerLimit", handle)
        sensor = getattr(self._nv, "NVML_TEMPERATURE_GPU", 0)
        temperature = self._query("nvmlDeviceGetTemperature", handle, sensor)
        return Sample(
            device_id=device.id,
            time=time.time(),
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            utilization_percent=float(rates.gpu) if rates is not None else None,
            power_watts=power_mw / 1000 if power_mw is not None else None,
            power_limit_watts=limit_mw / 1000 if limit_mw is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            processes=self._processes(handle),
        )

    def _processes(self, handle: Any) -> tuple[ProcessInfo, ...]:
        memory_by_pid: dict[int, int | None] = {}
        for query in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            for proc in self._query(query, handle) or ():
                used = getattr(proc, "usedGpuMemory", None)
                if used is None or used == _NOT_AVAILABLE_ULL:
                    used = None
                # a process in both lists is one process; keep the memory figure we have
                if memory_by_pid.get(proc.pid) is None:
                    memory_by_pid[proc.pid] = used
        names = self._names.lookup(memory_by_pid)
        return tuple(
            ProcessInfo(pid=pid, name=names[pid], memory_bytes=used)
            for pid, used in memory_by_pid.items()
        )

    def driver_version(self) -> str | None:
        """The NVIDIA driver version, e.g. '570.124.06'."""
        self._start()
        version = self._query("nvmlSystemGetDriverVersion")
        return _text(version) if version else None

    def close(self) -> None:
        """Shut NVML down if this backend started it."""
        if self._started:
            self._started = False
            # shutting down a library that is going away anyway
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
