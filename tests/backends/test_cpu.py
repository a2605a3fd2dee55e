"""The CPU backend on this machine's real psutil."""

import subprocess
import sys

import psutil

from backends.base import Device
from backends.cpu import CpuBackend, cpu_name, resident_bytes


def test_the_cpu_is_one_device_with_system_memory():
    (device,) = CpuBackend().discover()

    assert (device.id, device.backend, device.simulated) == ("cpu", "cpu", False)
    assert device.name == cpu_name() and device.name
    assert device.memory_total_bytes == psutil.virtual_memory().total


def test_cpu_sample_reports_what_psutil_knows_and_no_power():
    backend = CpuBackend()
    (device,) = backend.discover()

    first, second = backend.sample(device), backend.sample(device)

    for sample in (first, second):
        assert 0 <= sample.utilization_percent <= 100
        assert 0 < sample.memory_used_bytes <= sample.memory_total_bytes
        assert sample.power_watts is None and sample.power_limit_watts is None
        assert sample.temperature_c is None or 0 < sample.temperature_c < 130
        assert sample.processes == ()


def test_resident_bytes_of_a_real_process_and_none_once_it_has_gone():
    held = 48 * 2**20
    code = f"import time; held = b'x' * {held}; print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        rss = resident_bytes(child.pid)
        assert held <= rss <= held + 256 * 2**20
        assert abs(rss - psutil.Process(child.pid).memory_info().rss) < 4 * 2**20
    finally:
        child.kill()
        child.wait()
    assert resident_bytes(child.pid) is None


def test_the_cpu_and_simulated_gpus_run_work_on_the_host_a_real_gpu_does_not():
    assert Device("cpu", "cpu", "CPU").runs_on_host
    assert Device("sim-hip:0", "hip", "Simulated", 0, simulated=True).runs_on_host
    assert not Device("cuda:0", "cuda", "NVIDIA H100", 0).runs_on_host
