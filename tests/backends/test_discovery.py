"""discover(): device order, reasons for absent backends, routing samples, closing."""

import pytest

from backends.amdsmi import AmdSmiBackend
from backends.base import Backend, BadSimulateSpec
from backends.cpu import CpuBackend
from backends.discovery import Unavailable, discover
from backends.nvml import NvmlBackend
from tests.backends.fake_amdsmi import FakeAmdGpu, make_amdsmi
from tests.backends.fake_pynvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeGpu,
    make_pynvml,
)


class ExplodingBackend(Backend):
    """A vendor library failing in a way nobody planned for."""

    name = "hip"

    def discover(self):
        raise RuntimeError("segfault averted\nsecond line")

    def sample(self, device):
        raise AssertionError("never sampled")


def test_devices_come_cuda_then_hip_then_cpu_then_simulated():
    nv, smi = make_pynvml([FakeGpu(), FakeGpu()]), make_amdsmi([FakeAmdGpu()])
    backends = [NvmlBackend(library=nv), AmdSmiBackend(library=smi), CpuBackend()]

    inventory = discover("hip:1,cuda:1", backends=backends)

    assert [d.id for d in inventory.devices] == [
        "cuda:0",
        "cuda:1",
        "hip:0",
        "cpu",
        "sim-hip:0",
        "sim-cuda:0",
    ]
    assert inventory.unavailable == ()
    assert inventory.get("hip:0").name == "AMD Instinct MI300X"
    assert inventory.get("cuda:7") is None
    assert inventory.sample(inventory.get("cuda:1")).device_id == "cuda:1"
    assert inventory.sample(inventory.get("sim-cuda:0")).power_limit_watts == 700.0

    inventory.close()
    assert nv.initialized == 0 and smi.initialized is False


def test_absent_or_broken_backends_are_reported_in_one_line_each():
    nv = make_pynvml([FakeGpu()], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)

    inventory = discover(backends=[NvmlBackend(library=nv), ExplodingBackend(), CpuBackend()])

    assert [d.id for d in inventory.devices] == ["cpu"]
    assert inventory.unavailable[0] == Unavailable(
        "cuda", "NVML library not found (libnvidia-ml.so.1)"
    )
    assert inventory.unavailable[1].backend == "hip"
    assert "\n" not in inventory.unavailable[1].reason
    assert "segfault averted" in inventory.unavailable[1].reason


def test_a_bad_spec_fails_before_any_vendor_library_is_touched():
    with pytest.raises(BadSimulateSpec):
        discover("tpu:1", backends=[ExplodingBackend()])


def test_on_this_machine_every_backend_gives_devices_or_a_reason():
    inventory = discover()
    try:
        assert inventory.get("cpu") is not None
        for backend in ("cuda", "hip"):
            has_devices = any(d.backend == backend for d in inventory.devices)
            reasons = [u.reason for u in inventory.unavailable if u.backend == backend]
            assert has_devices or reasons or backend == "hip"  # a working amdsmi may find none
    finally:
        inventory.close()


def test_rescanned_follows_devices_that_go_and_come_and_keeps_the_order():
    backends = [NvmlBackend(library=make_pynvml([FakeGpu()])), CpuBackend()]
    inventory = discover("cuda:2,hip:1", backends=backends)
    simulated = inventory.owners["sim-cuda:0"]

    assert inventory.rescanned() is inventory  # nothing changed
    simulated.unplug("sim-cuda:0")
    simulated.plug("hip")
    now = inventory.rescanned()

    assert [d.id for d in now.devices] == ["cuda:0", "cpu", "sim-cuda:1", "sim-hip:0", "sim-hip:1"]
    assert now.get("sim-cuda:0") is None and "sim-cuda:0" not in now.owners
    assert now.sample(now.get("sim-hip:1")).device_id == "sim-hip:1"
    assert [d.id for d in inventory.devices][-3:] == ["sim-cuda:0", "sim-cuda:1", "sim-hip:0"]
    inventory.close()


def test_without_drops_gone_devices_and_asks_their_backend_what_an_error_means():
    nv = make_pynvml([FakeGpu(), FakeGpu()])
    inventory = discover(None, backends=[NvmlBackend(library=nv)])
    lost, other = nv.NVMLError(NVML_ERROR_GPU_IS_LOST), nv.NVMLError(NVML_ERROR_NOT_SUPPORTED)

    assert inventory.has_gone(inventory.get("cuda:1"), lost)
    assert not inventory.has_gone(inventory.get("cuda:1"), other)
    assert [d.id for d in inventory.without(["cuda:1"]).devices] == ["cuda:0"]
    assert inventory.without([]) is inventory


def test_an_inventory_is_the_device_inventory_a_run_is_checked_against():
    from backends.discovery import DeviceInventory

    inventory = discover(None, [CpuBackend()])
    try:
        assert isinstance(inventory, DeviceInventory)
        cpu = inventory.get("cpu")
        assert cpu is not None and inventory.sample(cpu).device_id == "cpu"
    finally:
        inventory.close()
