"""A fake `pynvml` with nvidia-ml-py's names, constants, error classes and return shapes.

`make_pynvml(gpus)` builds a module object that a backend can be handed (or that can be put
in `sys.modules["pynvml"]`). Each `FakeGpu` holds recorded values; a function named in
`not_supported` raises `NVMLError_NotSupported` as a real GPU without that sensor does.
"""

from __future__ import annotations

import string
import types
from dataclasses import dataclass, field

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0
NVML_VALUE_NOT_AVAILABLE_ULONGLONG = 2**64 - 1  # c_ulonglong(-1).value


@dataclass
class FakeProcess:
    """nvmlFriendlyObject of c_nvmlProcessInfo_t: pid, usedGpuMemory (None on WDDM)."""

    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's field name
    gpuInstanceId: int = 0xFFFFFFFF  # noqa: N815
    computeInstanceId: int = 0xFFFFFFFF  # noqa: N815


@dataclass
class FakeGpu:
    """Recorded values of one GPU, in NVML's units (bytes, mW, percent, degrees C)."""

    name: str | bytes = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-8f6e1c2a-3b4d-5e6f-7a8b-9c0d1e2f3a4b"
    bus_id: bytes = b"00000000:17:00.0"
    total: int = 85_520_809_984
    used: int = 1_073_741_824
    gpu_util: int = 37
    power_mw: int = 123_456
    limit_mw: int = 700_000
    temperature: int = 45
    compute: list[FakeProcess] = field(default_factory=list)
    graphics: list[FakeProcess] = field(default_factory=list)
    not_supported: set[str] = field(default_factory=set)
    lost: bool = False  # every call raises NVMLError_GpuIsLost, as after a GPU fell off the bus


class _Struct:
    """A ctypes structure stand-in: attributes only."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _make_errors(module: types.ModuleType) -> None:
    """NVMLError and one subclass per NVML_ERROR_* code, built the way pynvml builds them."""

    class NVMLError(Exception):  # noqa: N818 - pynvml's name
        _valClassMapping: dict[int, type] = {}  # noqa: N815

        def __new__(cls, value):
            if cls is NVMLError:
                cls = NVMLError._valClassMapping.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value
            return obj

        def __str__(self):
            return f"NVML error {self.value}"

    module.NVMLError = NVMLError
    for name in [n for n in vars(module) if n.startswith("NVML_ERROR_")]:
        suffix = string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        value = getattr(module, name)

        def new(cls, *args, _value=value):
            return NVMLError.__new__(cls, _value)

        error_class = type(f"NVMLError_{suffix}", (NVMLError,), {"__new__": new})
        setattr(module, error_class.__name__, error_class)
        NVMLError._valClassMapping[value] = error_class

    class NVMLLibraryMismatchError(Exception):
        pass

    module.NVMLLibraryMismatchError = NVMLLibraryMismatchError


def make_pynvml(gpus: list[FakeGpu], init_error: int | None = None) -> types.ModuleType:
    """A `pynvml` module over these GPUs; `init_error` makes nvmlInit raise that code."""
    nv = types.ModuleType("pynvml")
    for name, value in globals().items():
        if name.startswith("NVML_"):
            setattr(nv, name, value)
    _make_errors(nv)
    nv.calls = []  # names of every NVML function called, for tests that count them
    nv.initialized = 0

    def gpu_call(function):
        def call(handle, *args):
            nv.calls.append(function.__name__)
            if not nv.initialized:
                raise nv.NVMLError(NVML_ERROR_UNINITIALIZED)
            gpu = gpus[handle.index]
            if gpu.lost:
                raise nv.NVMLError(NVML_ERROR_GPU_IS_LOST)
            if function.__name__ in gpu.not_supported:
                raise nv.NVMLError(NVML_ERROR_NOT_SUPPORTED)
            return function(gpu, *args)

        call.__name__ = function.__name__
        setattr(nv, function.__name__, call)
        return call

    def nvmlInit():  # noqa: N802 - NVML's names
        if init_error is not None:
            raise nv.NVMLError(init_error)
        nv.initialized += 1

    def nvmlShutdown():  # noqa: N802
        nv.initialized -= 1

    def nvmlDeviceGetCount():  # noqa: N802
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index):  # noqa: N802
        if not 0 <= index < len(gpus):
            raise nv.NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Struct(index=index)

    def nvmlSystemGetDriverVersion():  # noqa: N802
        return "570.124.06"

    for fn in (nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex):
        setattr(nv, fn.__name__, fn)
    nv.nvmlSystemGetDriverVersion = nvmlSystemGetDriverVersion

    @gpu_call
    def nvmlDeviceGetName(gpu):  # noqa: N802
        return gpu.name

    @gpu_call
    def nvmlDeviceGetUUID(gpu):  # noqa: N802
        return gpu.uuid

    @gpu_call
    def nvmlDeviceGetPciInfo(gpu):  # noqa: N802
        return _Struct(busId=gpu.bus_id, busIdLegacy=gpu.bus_id[-12:], domain=0, bus=0x17)

    @gpu_call
    def nvmlDeviceGetMemoryInfo(gpu, version=None):  # noqa: N802
        return _Struct(total=gpu.total, free=gpu.total - gpu.used, used=gpu.used)

    @gpu_call
    def nvmlDeviceGetUtilizationRates(gpu):  # noqa: N802
        return _Struct(gpu=gpu.gpu_util, memory=12)

    @gpu_call
    def nvmlDeviceGetPowerUsage(gpu):  # noqa: N802
        return gpu.power_mw

    @gpu_call
    def nvmlDeviceGetEnforcedPowerLimit(gpu):  # noqa: N802
        return gpu.limit_mw

    @gpu_call
    def nvmlDeviceGetTemperature(gpu, sensor):  # noqa: N802
        assert sensor == NVML_TEMPERATURE_GPU
        return gpu.temperature

    @gpu_call
    def nvmlDeviceGetComputeRunningProcesses(gpu):  # noqa: N802
        # pynvml turns NVML_VALUE_NOT_AVAILABLE into None itself; pass both through as recorded
        return list(gpu.compute)

    @gpu_call
    def nvmlDeviceGetGraphicsRunningProcesses(gpu):  # noqa: N802
        return list(gpu.graphics)

    return nv
