"""The NVML backend against a fake pynvml with recorded values."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from backends.base import BackendUnavailable
from backends.nvml import NvmlBackend
from tests.backends.fake_pynvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_VALUE_NOT_AVAILABLE_ULONGLONG,
    FakeGpu,
    FakeProcess,
    make_pynvml,
)


def exited_pid() -> int:
    """The pid of a process that has already exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_discover_lists_gpus_by_nvml_index_with_decoded_strings():
    old_driver = FakeGpu(name=b"Tesla V100-SXM2-16GB", uuid="GPU-1111", bus_id=b"00000000:3B:00.0")
    backend = NvmlBackend(library=make_pynvml([FakeGpu(), old_driver]))

    first, second = backend.discover()

    assert (first.id, first.backend, first.index) == ("cuda:0", "cuda", 0)
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.pci_bus_id == "00000000:17:00.0"
    assert first.uuid == first.visible_id == "GPU-8f6e1c2a-3b4d-5e6f-7a8b-9c0d1e2f3a4b"
    assert first.memory_total_bytes == 85_520_809_984
    assert (second.id, second.name, second.pci_bus_id) == (
        "cuda:1",
        "Tesla V100-SXM2-16GB",
        "00000000:3B:00.0",
    )


def test_sample_converts_nvml_units():
    backend = NvmlBackend(library=make_pynvml([FakeGpu()]))
    (device,) = backend.discover()

    sample = backend.sample(device)

    assert sample.device_id == "cuda:0"
    assert sample.memory_used_bytes == 1_073_741_824
    assert sample.memory_total_bytes == 85_520_809_984
    assert sample.utilization_percent == 37.0
    assert sample.power_watts == pytest.approx(123.456)
    assert sample.power_limit_watts == 700.0
    assert sample.temperature_c == 45.0
    assert sample.processes == ()


def test_metrics_a_gpu_does_not_report_are_none_not_zero():
    quiet = FakeGpu(
        not_supported={
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetGraphicsRunningProcesses",
        }
    )
    backend = NvmlBackend(library=make_pynvml([quiet]))
    (device,) = backend.discover()

    sample = backend.sample(device)

    assert sample.power_watts is None
    assert sample.power_limit_watts is None
    assert sample.temperature_c is None
    assert sample.utilization_percent is None
    assert sample.memory_used_bytes == quiet.used


def test_processes_get_names_and_tolerate_vanished_pids_and_missing_memory():
    gone = exited_pid()
    me = os.getpid()
    gpu = FakeGpu(
        compute=[FakeProcess(me, 512 * 2**20), FakeProcess(gone, None)],
        # the same process listed again as a graphics client, memory not available there
        graphics=[FakeProcess(me, NVML_VALUE_NOT_AVAILABLE_ULONGLONG)],
    )
    backend = NvmlBackend(library=make_pynvml([gpu]))
    (device,) = backend.discover()

    by_pid = {p.pid: p for p in backend.sample(device).processes}

    assert set(by_pid) == {me, gone}
    assert by_pid[me].name == psutil.Process(me).name()
    assert by_pid[me].memory_bytes == 512 * 2**20
    assert by_pid[gone].name is None
    assert by_pid[gone].memory_bytes is None


def test_a_process_that_exits_between_two_samples():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        gpu = FakeGpu(compute=[FakeProcess(child.pid, 2**30)])
        backend = NvmlBackend(library=make_pynvml([gpu]))
        (device,) = backend.discover()
        (before,) = backend.sample(device).processes
        assert before.name is not None
    finally:
        child.kill()
        child.wait()

    # NVML may still list a process for a moment after it has gone
    (after,) = backend.sample(device).processes
    assert (after.pid, after.name) == (child.pid, None)
    gpu.compute.clear()
    assert backend.sample(device).processes == ()


def test_a_lost_gpu_raises_from_sample_so_the_sampler_can_skip_it():
    gpu = FakeGpu()
    nv = make_pynvml([gpu])
    backend = NvmlBackend(library=nv)
    (device,) = backend.discover()
    gpu.lost = True

    with pytest.raises(nv.NVMLError_GpuIsLost):
        backend.sample(device)


def test_a_lost_gpu_has_gone_but_a_metric_not_supported_has_not():
    gpu = FakeGpu()
    nv = make_pynvml([gpu])
    backend = NvmlBackend(library=nv)
    (device,) = backend.discover()
    gpu.lost = True

    with pytest.raises(nv.NVMLError) as raised:
        backend.sample(device)

    assert backend.has_gone(raised.value)
    assert not backend.has_gone(nv.NVMLError(NVML_ERROR_NOT_SUPPORTED))
    assert not backend.has_gone(RuntimeError("GPU is lost"))


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "NVML library not found (libnvidia-ml.so.1)"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "NVIDIA driver not loaded (NVML)"),
    ],
)
def test_nvml_that_cannot_start_gives_one_line_reason(code, reason):
    backend = NvmlBackend(library=make_pynvml([FakeGpu()], init_error=code))

    with pytest.raises(BackendUnavailable) as raised:
        backend.discover()

    assert str(raised.value) == reason


def test_without_the_nvml_library_pynvml_is_not_even_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr("backends.nvml.LIBRARY_FILE", "libspecdeck-absent-nvml.so.1")
    backend = NvmlBackend()

    with pytest.raises(BackendUnavailable) as raised:
        backend.discover()

    assert str(raised.value) == "NVML library not found (libspecdeck-absent-nvml.so.1)"
    assert "pynvml" not in sys.modules


def test_pynvml_is_imported_from_sys_modules_and_shut_down_on_close(monkeypatch):
    nv = make_pynvml([FakeGpu(), FakeGpu()])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    backend = NvmlBackend()

    assert [d.id for d in backend.discover()] == ["cuda:0", "cuda:1"]
    assert backend.driver_version() == "570.124.06"
    backend.close()
    assert nv.initialized == 0


def test_sampling_one_device_costs_well_under_a_millisecond_of_our_own_time():
    gpu = FakeGpu(compute=[FakeProcess(os.getpid(), 2**30)])
    backend = NvmlBackend(library=make_pynvml([gpu]))
    (device,) = backend.discover()
    backend.sample(device)

    n = 200
    start = time.perf_counter()
    for _ in range(n):
        backend.sample(device)
    mean_s = (time.perf_counter() - start) / n

    assert mean_s < 0.5e-3
