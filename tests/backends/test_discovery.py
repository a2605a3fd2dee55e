"""discover(): device order, reasons for absent backends, routing samples, closing."""

import pytest

from backends.amdsmi import AmdSmiBackend
from backends.base import Backend, BadSimulateSpec
from backends.cpu import CpuBackend
from backends.discovery import Unavailable, discover
from backends.nvml import NvmlBackend
from tests.backends.fake_amdsmi import FakeAmdGpu, make_amdsmi
from tests.backends.fake_pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, make_pynvml


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
