"""The CPU backend on this machine's real psutil."""

import psutil

from backends.cpu import CpuBackend, cpu_name


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
