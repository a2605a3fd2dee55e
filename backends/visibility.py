"""The environment that shows a child process exactly the devices it was placed on."""

from __future__ import annotations

from collections.abc import Sequence

from backends.base import Device

# what a child sees when it must use no GPU at all (the CPU and simulated devices)
NO_GPU_ENV = {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": "", "ROCR_VISIBLE_DEVICES": ""}


def process_backend(devices: Sequence[Device]) -> str:
    """The backend of a process placed on these devices, whose `[backends.X] python` runs it:
    'cuda', 'hip' or 'cpu' (simulated devices run on the CPU); mixed raises ValueError."""
    if not devices:
        raise ValueError("no devices to make visible")
    kinds = {"cpu" if d.simulated else d.backend for d in devices}
    if len(kinds) > 1:
        ids = ", ".join(d.id for d in devices)
        raise ValueError(f"devices of mixed backends cannot share one process: {ids}")
    return kinds.pop()


def _visible_ids(devices: Sequence[Device]) -> list[str]:
    ids = []
    for device in devices:
        value = device.visible_id or device.uuid
        if value is None and device.index is None:
            raise ValueError(f"{device.id} has neither a UUID nor an index to make it visible")
        ids.append(value if value is not None else str(device.index))
    return ids


def visibility_env(devices: Sequence[Device]) -> dict[str, str]:
    """Environment variables that make exactly these devices (of one backend) visible."""
    runtime = process_backend(devices)
    if runtime == "cpu":
        return dict(NO_GPU_ENV)
    ids = _visible_ids(devices)
    if runtime == "cuda":
        # UUIDs name the same GPU whatever the order; PCI order makes indexes match NVML's
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(ids)}
    # ROCr picks the GPUs; HIP (which also honours CUDA_VISIBLE_DEVICES) then numbers them 0..n-1
    renumbered = ",".join(str(i) for i in range(len(devices)))
    return {
        "ROCR_VISIBLE_DEVICES": ",".join(ids),
        "HIP_VISIBLE_DEVICES": renumbered,
        "CUDA_VISIBLE_DEVICES": renumbered,
    }


def torch_devices(devices: Sequence[Device]) -> list[str]:
    """The torch device names these devices have inside a child run with `visibility_env`."""
    if process_backend(devices) == "cpu":
        return ["cpu"]
    return [f"cuda:{i}" for i in range(len(devices))]
