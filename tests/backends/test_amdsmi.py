"""The amdsmi backend against a fake amdsmi with AMD SMI 7's shapes, "N/A" values included."""

import sys

import pytest

from backends.amdsmi import AmdSmiBackend
from backends.base import BackendUnavailable
from tests.backends.fake_amdsmi import (
    AMDSMI_STATUS_INIT_ERROR,
    FakeAmdGpu,
    make_amdsmi,
    process_entry,
)


def test_discover_lists_gpus_with_name_bus_id_uuid_and_rocr_id():
    second = FakeAmdGpu(market_name="N/A", bdf="0000:8a:00.0", hip_id=1, hip_uuid="")
    backend = AmdSmiBackend(library=make_amdsmi([FakeAmdGpu(), second]))

    first, other = backend.discover()

    assert (first.id, first.backend, first.index) == ("hip:0", "hip", 0)
    assert first.name == "AMD Instinct MI300X"
    assert first.pci_bus_id == "0000:0c:00.0"
    assert first.uuid == "a1ff74a1-0000-1000-8095-0f5a1c3e2b7d"
    assert first.visible_id == "GPU-4b2c8e0d1a7f9e3c"
    assert first.memory_total_bytes == 196_592 * 2**20
    # no market name and no HIP UUID: a generic name and the HIP index
    assert (other.id, other.name, other.visible_id) == ("hip:1", "AMD GPU 1", "1")


def test_sample_reads_memory_activity_power_temperature_and_processes():
    gpu = FakeAmdGpu(processes=[process_entry(4242, "python3", 3 * 2**30)])
    backend = AmdSmiBackend(library=make_amdsmi([gpu]))
    (device,) = backend.discover()

    sample = backend.sample(device)

    assert sample.memory_used_bytes == 2 * 2**30
    assert sample.memory_total_bytes == 196_592 * 2**20
    assert sample.utilization_percent == 64.0
    assert sample.power_watts == 412.0
    assert sample.power_limit_watts == 750.0
    assert sample.temperature_c == 52.0  # the hotspot; the edge sensor reads 0 on MI300
    ((pid, name, memory),) = [(p.pid, p.name, p.memory_bytes) for p in sample.processes]
    assert (pid, name, memory) == (4242, "python3", 3 * 2**30)


def test_na_values_and_unsupported_calls_become_none():
    gpu = FakeAmdGpu(
        gfx_activity="N/A",
        power={"socket_power": "N/A", "current_socket_power": "N/A", "power_limit": "N/A"},
        temperatures={},
        processes=[process_entry(17, "N/A", 0) | {"memory_usage": {"vram_mem": "N/A"}}],
        not_supported={"amdsmi_get_gpu_memory_usage", "amdsmi_get_gpu_memory_total"},
    )
    backend = AmdSmiBackend(library=make_amdsmi([gpu]))
    (device,) = backend.discover()

    sample = backend.sample(device)

    assert sample.utilization_percent is None
    assert sample.power_watts is None
    assert sample.power_limit_watts is None
    assert sample.temperature_c is None
    (process,) = sample.processes
    assert (process.pid, process.name, process.memory_bytes) == (17, None, 0)
    # memory falls back to amdsmi_get_gpu_vram_usage, which reports MB
    assert sample.memory_used_bytes == 2 * 2**30
    assert sample.memory_total_bytes == 196_592 * 2**20


def test_older_cards_report_average_power_instead_of_current():
    gpu = FakeAmdGpu(
        power={"current_socket_power": 0, "average_socket_power": 230, "power_limit": 300}
    )
    backend = AmdSmiBackend(library=make_amdsmi([gpu]))
    (device,) = backend.discover()

    sample = backend.sample(device)

    assert (sample.power_watts, sample.power_limit_watts) == (230.0, 300.0)


def test_amdsmi_that_cannot_load_its_library_gives_one_line_and_prints_nothing(
    tmp_path, monkeypatch, capsys
):
    # what `import amdsmi` does without ROCm: print a complaint, then raise KeyError
    package = tmp_path / "amdsmi"
    package.mkdir()
    (package / "__init__.py").write_text(
        "print('/opt/rocm/lib/libamd_smi.so: cannot open shared object file')\n"
        "raise KeyError('libamd_smi.so')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)

    with pytest.raises(BackendUnavailable) as raised:
        AmdSmiBackend().discover()

    assert str(raised.value) == "amdsmi could not load libamd_smi.so"
    assert capsys.readouterr().out == ""


def test_amdsmi_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "amdsmi", None)

    with pytest.raises(BackendUnavailable, match="amdsmi Python package not installed"):
        AmdSmiBackend().discover()


def test_amdsmi_init_failure_is_one_line():
    backend = AmdSmiBackend(
        library=make_amdsmi([FakeAmdGpu()], init_error=AMDSMI_STATUS_INIT_ERROR)
    )

    with pytest.raises(BackendUnavailable) as raised:
        backend.discover()

    assert str(raised.value) == "amdsmi could not start: AMDSMI_STATUS_INIT_ERROR"


def test_close_shuts_amdsmi_down():
    smi = make_amdsmi([FakeAmdGpu()])
    backend = AmdSmiBackend(library=smi)
    backend.discover()

    backend.close()

    assert smi.initialized is False
