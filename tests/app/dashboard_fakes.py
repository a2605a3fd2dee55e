"""Fixed devices, samples and models for dashboard tests (deterministic, no hardware)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from app.config import load_config
from backends.base import Backend, Device, DeviceGone, ProcessInfo, Sample
from backends.discovery import Inventory
from backends.sampler import DeviceSampler
from engine.catalog import ModelInfo

GIB = 2**30
WAIT_S = 60.0  # the longest a test waits for a state before it fails (a loaded 2-core box)

DEVICES = (
    Device("cpu", "cpu", "Test CPU", memory_total_bytes=64 * GIB),
    Device("sim-cuda:0", "cuda", "Simulated NVIDIA H100 80GB HBM3", 0, True, 80 * GIB),
    Device("sim-cuda:1", "cuda", "Simulated NVIDIA H100 80GB HBM3", 1, True, 80 * GIB),
    Device("sim-hip:0", "hip", "Simulated AMD Instinct MI300X", 0, True, 192 * GIB),
)

# sim-cuda:1 is nearly full, so a big target does not fit there; the CPU reports no power;
# a device plugged in later has 1 GiB in use
USED = {"cpu": 8 * GIB, "sim-cuda:0": 2 * GIB, "sim-cuda:1": 79 * GIB, "sim-hip:0": 4 * GIB}
GPU_PID = 4242  # a process every GPU reports, with 3 GiB of device memory


class FixedBackend(Backend):
    """Returns the same readings every time; utilization varies with the number of samples.

    `unplug` and `plug` take a device away or bring one, as a GPU that falls off the bus or
    is hot-plugged: a gone device's reading raises DeviceGone, and `rescan` lists what is there.
    """

    name = "simulated"

    def __init__(self) -> None:
        self.calls = 0
        self.present = list(DEVICES)
        self.gpu_process_bytes = 3 * GIB  # GPU_PID's memory on every GPU

    def discover(self) -> list[Device]:
        return list(self.present)

    def rescan(self) -> list[Device]:
        return list(self.present)

    def unplug(self, device_id: str) -> None:
        self.present = [d for d in self.present if d.id != device_id]

    def plug(self, device: Device) -> None:
        self.present.append(device)

    def sample(self, device: Device) -> Sample:
        if device not in self.present:
            raise DeviceGone(f"{device.id} fell off the bus")
        self.calls += 1
        gpu = device.backend != "cpu"
        return Sample(
            device_id=device.id,
            time=1_700_000_000.0,
            memory_used_bytes=USED.get(device.id, GIB),
            memory_total_bytes=device.memory_total_bytes,
            utilization_percent=float((self.calls * 7) % 100),
            power_watts=120.0 if gpu else None,
            power_limit_watts=700.0 if gpu else None,
            temperature_c=45.0 if gpu else None,
            processes=(ProcessInfo(GPU_PID, "python", self.gpu_process_bytes),) if gpu else (),
        )


class PausedSampler(DeviceSampler):
    """A real sampler whose thread never starts: tests call poll() to move time on."""

    def start(self) -> None:
        """Stay paused."""


def fixed_inventory() -> Inventory:
    """The four fixed devices, owned by one FixedBackend."""
    backend = FixedBackend()
    return Inventory(devices=DEVICES, owners={d.id: backend for d in DEVICES}, backends=(backend,))


def fake_model(name: str, size_gib: float, fingerprint: str = "tok-1", **kw) -> ModelInfo:
    """A catalog entry that is never loaded."""
    return ModelInfo(
        name=name,
        path=Path("/models") / name,
        architecture=kw.get("architecture", "LlamaForCausalLM"),
        parameters=kw.get("parameters", int(size_gib * GIB / 2)),
        size_bytes=int(size_gib * GIB),
        dtype=kw.get("dtype", "bfloat16"),
        tokenizer_fingerprint=fingerprint,
        bundled=kw.get("bundled", False),
    )


MODELS = (
    fake_model("big-target-7b", 13.5, bundled=True),
    fake_model("small-draft-160m", 0.3, bundled=True),
    fake_model("other-family-1b", 2.0, fingerprint="tok-2"),
)


def make_app(models=MODELS, polls: int = 12, **kw):
    """A dashboard over the fixed devices, with `polls` samples of history."""
    from app.dashboard import DashboardApp

    inventory = fixed_inventory()
    sampler = PausedSampler(inventory, interval_s=1.0, history=120)
    for _ in range(polls):
        sampler.poll()
    return DashboardApp(load_config(), inventory, sampler, models=models, **kw)


class FakeRunHandle:
    """A stand-in for `ipc.runner.RunHandle`, with its names: a run that goes on until its
    events say it ended; stopping it reaches no daemon."""

    run_id = "20260101-000000-fake"
    record_dir = Path("/nonexistent/runs/20260101-000000-fake")
    error = None
    finished = False

    @property
    def pids(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        """Nothing to stop."""

    def wait(self, timeout: float | None = None) -> dict | None:
        return None

    def wait_to_end(self) -> dict | None:
        return None


def as_if_launched(screen) -> None:
    """Make the main screen's run busy as a launch does; the test then posts its events."""
    screen.live_run.handle = FakeRunHandle()


async def wait_for(pilot, condition: Callable[[], object], what: str, timeout_s=WAIT_S) -> None:
    """Let the app run until `condition()` holds; fail naming `what` once `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}; it never came")
        await pilot.pause(0.01)  # the app's queue runs meanwhile, and so do worker threads


async def wait_filled(pilot) -> None:
    """Wait until the parts mounted after the first frame (inputs, pickers, panes) are there."""
    await wait_for(pilot, lambda: pilot.app.screen.filled, "the run controls and the live panes")
