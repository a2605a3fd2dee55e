"""AMD GPUs (HIP) and their telemetry through AMD SMI (the `amdsmi` Python package)."""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from types import ModuleType
from typing import Any

from backends.base import Backend, BackendUnavailable, Device, ProcessInfo, Sample

LIBRARY_FILE = "libamd_smi.so"

# amdsmi_status_t codes (amdsmi.h) that mean "not reported here", not "something broke"
_NOT_REPORTED_CODES = frozenset(
    {
        2,  # AMDSMI_STATUS_NOT_SUPPORTED
        3,  # AMDSMI_STATUS_NOT_YET_IMPLEMENTED
        10,  # AMDSMI_STATUS_NO_PERM
        31,  # AMDSMI_STATUS_NOT_FOUND
        40,  # AMDSMI_STATUS_NO_DATA
        43,  # AMDSMI_STATUS_UNEXPECTED_DATA
    }
)
_ALL_ONES = frozenset({0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})  # "unsupported" sentinels
# power_limit is in W, except some ROCm 7 previews that report uW
_MICROWATT_THRESHOLD = 100_000


def _number(value: Any) -> float | None:
    """amdsmi reports a missing value as "N/A" or an all-ones integer; both become None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value in _ALL_ONES or value < 0:
        return None
    return value


def _string(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or not value.strip() or value.strip() == "N/A":
        return None
    return value.strip()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class AmdSmiBackend(Backend):
    """AMD GPUs, by amdsmi processor-handle order; every amdsmi call goes through `_query`."""

    name = "hip"

    def __init__(self, library: ModuleType | None = None) -> None:
        self._smi = library
        self._handles: dict[str, Any] = {}
        self._started = False

    def _start(self) -> ModuleType:
        if self._started:
            return self._smi
        if self._smi is None:
            try:
                # without ROCm its wrapper prints to stdout, which would corrupt --json
                with contextlib.redirect_stdout(io.StringIO()):
                    self._smi = importlib.import_module("amdsmi")
            except ModuleNotFoundError:
                raise BackendUnavailable("amdsmi Python package not installed") from None
            except (KeyError, OSError):  # its ctypes wrapper fails this way without ROCm
                raise BackendUnavailable(f"amdsmi could not load {LIBRARY_FILE}") from None
            except Exception as exc:
                raise BackendUnavailable(f"amdsmi cannot be imported: {_one_line(exc)}") from None
        smi = self._smi
        try:
            flags = getattr(smi, "AmdSmiInitFlags", None)
            if flags is not None:
                smi.amdsmi_init(flags.INIT_AMD_GPUS)
            else:
                smi.amdsmi_init()
        except Exception as exc:
            raise BackendUnavailable(self._init_reason(exc)) from None
        self._started = True
        return smi

    def _init_reason(self, exc: Exception) -> str:
        code = getattr(exc, "err_code", None)
        if code == 34:  # AMDSMI_STATUS_DRIVER_NOT_LOADED
            return "amdgpu driver not loaded (amdsmi)"
        if code in (4, 5):  # AMDSMI_STATUS_FAIL_LOAD_MODULE / _SYMBOL
            return f"amdsmi could not load {LIBRARY_FILE}"
        info = getattr(exc, "get_error_info", None)
        detail = info(False) if callable(info) else _one_line(exc)
        return f"amdsmi could not start: {' '.join(str(detail).split())}"

    def _query(self, function: str, *args: Any) -> Any:
        """Call one amdsmi function; a metric that is not reported comes back as None."""
        fn = getattr(self._smi, function, None)
        if fn is None:  # an amdsmi version without this function
            return None
        try:
            return fn(*args)
        except self._smi.AmdSmiLibraryException as exc:
            if getattr(exc, "err_code", None) in _NOT_REPORTED_CODES:
                return None
            raise

    def discover(self) -> list[Device]:
        """amdsmi's GPUs in its handle order (PCI bus order)."""
        self._start()
        devices = []
        for index, handle in enumerate(self._query("amdsmi_get_processor_handles") or ()):
            device_id = f"hip:{index}"
            self._handles[device_id] = handle
            asic = self._query("amdsmi_get_gpu_asic_info", handle) or {}
            enumeration = self._query("amdsmi_get_gpu_enumeration_info", handle) or {}
            devices.append(
                Device(
                    id=device_id,
                    backend="hip",
                    name=_string(asic.get("market_name")) or f"AMD GPU {index}",
                    index=index,
                    memory_total_bytes=self._memory(handle)[1],
                    pci_bus_id=_string(self._query("amdsmi_get_gpu_device_bdf", handle)),
                    uuid=_string(self._query("amdsmi_get_gpu_device_uuid", handle)),
                    visible_id=self._visible_id(index, enumeration),
                )
            )
        return devices

    @staticmethod
    def _visible_id(index: int, enumeration: dict) -> str:
        """What ROCR_VISIBLE_DEVICES accepts for this GPU: its ROCr UUID, else its HIP index."""
        hip_uuid = _string(enumeration.get("hip_uuid"))
        if hip_uuid and hip_uuid.startswith("GPU-"):
            return hip_uuid
        hip_id = _number(enumeration.get("hip_id"))
        return str(int(hip_id)) if hip_id is not None else str(index)

    def _memory(self, handle: Any) -> tuple[int | None, int | None]:
        """(used, total) VRAM in bytes; falls back to the MB figures of vram_usage."""
        memory_type = getattr(getattr(self._smi, "AmdSmiMemoryType", None), "VRAM", None)
        used = total = None
        if memory_type is not None:
            used = _number(self._query("amdsmi_get_gpu_memory_usage", handle, memory_type))
            total = _number(self._query("amdsmi_get_gpu_memory_total", handle, memory_type))
        if used is None or total is None:
            usage = self._query("amdsmi_get_gpu_vram_usage", handle) or {}
            mb_used, mb_total = _number(usage.get("vram_used")), _number(usage.get("vram_total"))
            used = used if used is not None else (mb_used * 2**20 if mb_used is not None else None)
            total = (
                total if total is not None else (mb_total * 2**20 if mb_total is not None else None)
            )
        return (int(used) if used is not None else None, int(total) if total is not None else None)

    def sample(self, device: Device) -> Sample:
        """One reading: memory, activity, power, temperature and processes."""
        handle = self._handles[device.id]
        used, total = self._memory(handle)
        activity = self._query("amdsmi_get_gpu_activity", handle) or {}
        power = self._query("amdsmi_get_power_info", handle) or {}
        watts = next(
            (
                _number(power.get(key))
                for key in ("current_socket_power", "average_socket_power", "socket_power")
                if _number(power.get(key))  # 0 here means "this card reports another field"
            ),
            None,
        )
        limit = _number(power.get("power_limit"))
        if limit is not None and limit > _MICROWATT_THRESHOLD:
            limit = limit / 1e6
        utilization = _number(activity.get("gfx_activity"))
        return Sample(
            device_id=device.id,
            time=time.time(),
            memory_used_bytes=used,
            memory_total_bytes=total,
            utilization_percent=float(utilization) if utilization is not None else None,
            power_watts=float(watts) if watts is not None else None,
            power_limit_watts=float(limit) if limit else None,
            temperature_c=self._temperature(handle),
            processes=self._processes(handle),
        )

    def _temperature(self, handle: Any) -> float | None:
        sensors = getattr(self._smi, "AmdSmiTemperatureType", None)
        metrics = getattr(self._smi, "AmdSmiTemperatureMetric", None)
        if sensors is None or metrics is None:
            return None
        # MI-series report the hotspot (junction); consumer cards may only have the edge sensor
        for sensor in ("HOTSPOT", "JUNCTION", "EDGE"):
            if not hasattr(sensors, sensor):
                continue
            value = _number(
                self._query(
                    "amdsmi_get_temp_metric", handle, getattr(sensors, sensor), metrics.CURRENT
                )
            )
            if value is not None and value > 0:  # 0 is what an absent sensor reads
                return float(value)
        return None

    def _processes(self, handle: Any) -> tuple[ProcessInfo, ...]:
        processes = []
        for entry in self._query("amdsmi_get_gpu_process_list", handle) or ():
            info = entry
            if not isinstance(entry, dict):  # amdsmi 6.0/6.1 list process handles
                info = self._query("amdsmi_get_gpu_process_info", handle, entry) or {}
            pid = info.get("pid")
            if not isinstance(pid, int):
                continue
            usage = info.get("memory_usage") or {}
            memory = _number(usage.get("vram_mem"))
            if memory is None:
                memory = _number(info.get("mem"))
            processes.append(
                ProcessInfo(
                    pid=pid,
                    name=_string(info.get("name")),
                    memory_bytes=int(memory) if memory is not None else None,
                )
            )
        return tuple(processes)

    def close(self) -> None:
        """Shut amdsmi down if this backend started it."""
        if self._started:
            self._started = False
            # shutting down a library that is going away anyway
            with contextlib.suppress(Exception):
                self._smi.amdsmi_shut_down()
