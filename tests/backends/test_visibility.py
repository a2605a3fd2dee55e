"""visibility_env and torch_devices: what a child process is shown, and how torch names it."""

import pytest

from backends.base import Device
from backends.visibility import torch_devices, visibility_env

H100_0 = Device("cuda:0", "cuda", "H100", index=0, uuid="GPU-aaaa", visible_id="GPU-aaaa")
H100_2 = Device("cuda:2", "cuda", "H100", index=2, uuid="GPU-cccc", visible_id="GPU-cccc")
NO_UUID = Device("cuda:3", "cuda", "old GPU", index=3)
MI300_1 = Device(
    "hip:1", "hip", "MI300X", index=1, uuid="a1ff-1", visible_id="GPU-4b2c8e0d1a7f9e3c"
)
MI300_3 = Device("hip:3", "hip", "MI300X", index=3, visible_id="3")
CPU = Device("cpu", "cpu", "EPYC")
SIM = Device("sim-cuda:0", "cuda", "Simulated NVIDIA H100 80GB HBM3", index=0, simulated=True)


def test_cuda_devices_by_uuid_in_pci_order():
    env = visibility_env([H100_2, H100_0])

    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-cccc,GPU-aaaa"}
    assert torch_devices([H100_2, H100_0]) == ["cuda:0", "cuda:1"]


def test_cuda_device_without_uuid_falls_back_to_its_index():
    assert visibility_env([H100_0, NO_UUID])["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,3"


def test_hip_devices_are_picked_by_rocr_and_renumbered_for_hip():
    env = visibility_env([MI300_1, MI300_3])

    assert env == {
        "ROCR_VISIBLE_DEVICES": "GPU-4b2c8e0d1a7f9e3c,3",
        "HIP_VISIBLE_DEVICES": "0,1",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    assert torch_devices([MI300_1, MI300_3]) == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize("devices", [[CPU], [SIM], [CPU, SIM]])
def test_cpu_and_simulated_devices_see_no_gpu_and_run_on_cpu(devices):
    env = visibility_env(devices)

    assert env == {
        "CUDA_VISIBLE_DEVICES": "",
        "HIP_VISIBLE_DEVICES": "",
        "ROCR_VISIBLE_DEVICES": "",
    }
    assert torch_devices(devices) == ["cpu"]


@pytest.mark.parametrize("devices", [[H100_0, MI300_1], [H100_0, CPU], [SIM, H100_0], []])
def test_mixed_backends_or_nothing_is_refused(devices):
    with pytest.raises(ValueError):
        visibility_env(devices)
    with pytest.raises(ValueError):
        torch_devices(devices)
