"""A fake `amdsmi` with AMD SMI 7's names, enums, exception classes and return shapes.

`make_amdsmi(gpus)` builds a module object for `AmdSmiBackend(library=...)`. Values are the
dicts amdsmi_interface returns, including its "N/A" strings; a function named in
`not_supported` raises AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_INIT_ERROR = 18
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34


class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code):
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = {
            AMDSMI_STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
            AMDSMI_STATUS_INIT_ERROR: "AMDSMI_STATUS_INIT_ERROR - Initialization error",
        }.get(err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")

    def __str__(self):
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_info(self, detailed=True):
        return self.err_info if detailed else self.err_info.split(" - ")[0]

    def get_error_code(self):
        return self.err_code


class AmdSmiParameterException(AmdSmiException):
    pass


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1


class AmdSmiMemoryType(IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class FakeHandle:
    """amdsmi_processor_handle stand-in."""

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass
class FakeAmdGpu:
    """Recorded values of one AMD GPU as amdsmi reports them."""

    market_name: str = "AMD Instinct MI300X"
    bdf: str = "0000:0c:00.0"
    uuid: str = "a1ff74a1-0000-1000-8095-0f5a1c3e2b7d"
    hip_id: int | str = 0
    hip_uuid: str = "GPU-4b2c8e0d1a7f9e3c"
    vram_total: int = 196_592 * 2**20  # bytes, from amdsmi_get_gpu_memory_total
    vram_used: int = 2 * 2**30
    gfx_activity: int | str = 64
    power: dict[str, Any] = field(
        default_factory=lambda: {
            "socket_power": 412,
            "current_socket_power": 412,
            "average_socket_power": "N/A",
            "gfx_voltage": "N/A",
            "soc_voltage": "N/A",
            "mem_voltage": "N/A",
            "power_limit": 750,
        }
    )
    temperatures: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 52})
    processes: list[dict] = field(default_factory=list)
    not_supported: set[str] = field(default_factory=set)


def process_entry(pid: int, name: str, vram: int) -> dict:
    """One amdsmi_get_gpu_process_list entry, shaped as amdsmi 7 returns it."""
    return {
        "name": name,
        "pid": pid,
        "mem": vram,
        "engine_usage": {"gfx": 1000, "enc": 0},
        "memory_usage": {"gtt_mem": 4096, "cpu_mem": 8192, "vram_mem": vram},
        "cu_occupancy": "N/A",
    }


def make_amdsmi(gpus: list[FakeAmdGpu], init_error: int | None = None) -> types.ModuleType:
    """An `amdsmi` module over these GPUs; `init_error` makes amdsmi_init raise that code."""
    smi = types.ModuleType("amdsmi")
    for value in (
        AmdSmiException,
        AmdSmiLibraryException,
        AmdSmiParameterException,
        AmdSmiInitFlags,
        AmdSmiTemperatureType,
        AmdSmiTemperatureMetric,
        AmdSmiMemoryType,
    ):
        setattr(smi, value.__name__, value)
    smi.initialized = False

    def amdsmi_init(flag=AmdSmiInitFlags.INIT_AMD_GPUS):
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag)
        if init_error is not None:
            raise AmdSmiLibraryException(init_error)
        smi.initialized = True

    def amdsmi_shut_down():
        smi.initialized = False

    def amdsmi_get_processor_handles():
        return [FakeHandle(i) for i in range(len(gpus))]

    smi.amdsmi_init = amdsmi_init
    smi.amdsmi_shut_down = amdsmi_shut_down
    smi.amdsmi_get_processor_handles = amdsmi_get_processor_handles

    def gpu_call(function):
        def call(handle, *args):
            if not smi.initialized:
                raise AmdSmiLibraryException(AMDSMI_STATUS_INIT_ERROR)
            gpu = gpus[handle.index]
            if function.__name__ in gpu.not_supported:
                raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
            return function(gpu, *args)

        setattr(smi, function.__name__, call)
        return call

    @gpu_call
    def amdsmi_get_gpu_asic_info(gpu):
        return {
            "market_name": gpu.market_name,
            "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
            "subvendor_id": "0x1002",
            "device_id": "0x74a1",
            "rev_id": "0x00",
            "asic_serial": "0x9D1F5A2C3E4B6D7A",
            "oam_id": 0,
            "num_compute_units": 304,
            "target_graphics_version": "gfx942",
            "subsystem_id": "0x74a1",
        }

    @gpu_call
    def amdsmi_get_gpu_enumeration_info(gpu):
        return {
            "drm_render": 128,
            "drm_card": 0,
            "hsa_id": 2,
            "hip_id": gpu.hip_id,
            "hip_uuid": gpu.hip_uuid,
        }

    @gpu_call
    def amdsmi_get_gpu_device_bdf(gpu):
        return gpu.bdf

    @gpu_call
    def amdsmi_get_gpu_device_uuid(gpu):
        return gpu.uuid

    @gpu_call
    def amdsmi_get_gpu_memory_total(gpu, mem_type):
        assert isinstance(mem_type, AmdSmiMemoryType)
        return gpu.vram_total

    @gpu_call
    def amdsmi_get_gpu_memory_usage(gpu, mem_type):
        assert isinstance(mem_type, AmdSmiMemoryType)
        return gpu.vram_used

    @gpu_call
    def amdsmi_get_gpu_vram_usage(gpu):
        return {"vram_total": gpu.vram_total // 2**20, "vram_used": gpu.vram_used // 2**20}

    @gpu_call
    def amdsmi_get_gpu_activity(gpu):
        return {"gfx_activity": gpu.gfx_activity, "umc_activity": "N/A", "mm_activity": "N/A"}

    @gpu_call
    def amdsmi_get_power_info(gpu):
        return dict(gpu.power)

    @gpu_call
    def amdsmi_get_temp_metric(gpu, sensor_type, metric):
        assert isinstance(sensor_type, AmdSmiTemperatureType)
        assert isinstance(metric, AmdSmiTemperatureMetric)
        if int(sensor_type) not in gpu.temperatures:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
        return gpu.temperatures[int(sensor_type)]

    @gpu_call
    def amdsmi_get_gpu_process_list(gpu):
        return [dict(p) for p in gpu.processes]

    return smi
