"""DeviceSampler: bounded history, phase stamps, failing devices skipped, the thread."""

import threading
import time

import pytest

from backends.base import Backend, Device, Sample
from backends.discovery import Inventory
from backends.sampler import DeviceSampler
from backends.simulated import SimulatedBackend


class CountingBackend(Backend):
    """Devices whose utilization is the number of the reading; `broken` ones raise."""

    name = "cuda"

    def __init__(self, broken=()):
        self.broken = set(broken)
        self.readings = 0

    def discover(self):
        return [Device(id=f"cuda:{i}", backend="cuda", name="GPU", index=i) for i in range(2)]

    def sample(self, device):
        if device.id in self.broken:
            raise RuntimeError("GPU is lost")
        self.readings += 1
        return Sample(device_id=device.id, time=time.time(), utilization_percent=self.readings)


def inventory_of(backend: Backend) -> Inventory:
    devices = tuple(backend.discover())
    return Inventory(devices=devices, owners={d.id: backend for d in devices}, backends=(backend,))


def test_history_is_a_bounded_ring_buffer():
    sampler = DeviceSampler(inventory_of(CountingBackend()), history=3)

    for _ in range(5):
        sampler.poll()

    history = sampler.history("cuda:0")
    assert len(history) == 3
    assert [s.utilization_percent for s in history] == [5, 7, 9]
    assert sampler.latest("cuda:0") is history[-1]
    assert sampler.latest("cuda:9") is None and sampler.history("cuda:9") == []


def test_each_sample_is_stamped_with_the_phase_at_the_time():
    sampler = DeviceSampler(inventory_of(CountingBackend()))
    sampler.poll()
    sampler.phase = "prefill"
    sampler.poll()
    sampler.phase = "decode"
    sampler.poll()

    assert [s.phase for s in sampler.history("cuda:1")] == ["idle", "prefill", "decode"]
    with pytest.raises(ValueError, match="unknown phase"):
        sampler.phase = "warming up"


def test_a_device_whose_reading_fails_is_skipped_not_fatal():
    sampler = DeviceSampler(inventory_of(CountingBackend(broken={"cuda:0"})))

    taken = sampler.poll()

    assert [s.device_id for s in taken] == ["cuda:1"]
    assert sampler.history("cuda:0") == []


def test_subscribers_get_every_sample_and_a_broken_one_does_not_stop_others():
    sampler = DeviceSampler(inventory_of(CountingBackend()))
    seen = []

    def broken(sample):
        raise RuntimeError("listener bug")

    sampler.subscribe(broken)
    unsubscribe = sampler.subscribe(seen.append)
    sampler.poll()
    unsubscribe()
    sampler.poll()

    assert [s.device_id for s in seen] == ["cuda:0", "cuda:1"]


def test_the_thread_polls_at_its_interval_until_stopped():
    sampler = DeviceSampler(inventory_of(CountingBackend()), interval_s=0.01)
    two = threading.Event()
    sampler.subscribe(lambda s: two.set() if len(sampler.history("cuda:1")) >= 2 else None)

    sampler.start()
    try:
        assert two.wait(5)
    finally:
        sampler.stop()

    count = len(sampler.history("cuda:0"))
    time.sleep(0.05)
    assert len(sampler.history("cuda:0")) == count
    assert not any(t.name == "specdeck-sampler" for t in threading.enumerate())


def test_simulated_devices_get_busy_when_the_sampler_phase_says_decode():
    now = [0.0]
    backend = SimulatedBackend((("cuda", 1),), clock=lambda: now[0])
    sampler = DeviceSampler(inventory_of(backend))
    (idle,) = sampler.poll()

    sampler.phase = "decode"
    now[0] += 8
    (busy,) = sampler.poll()

    assert busy.phase == "decode"
    assert busy.utilization_percent > idle.utilization_percent + 50


def test_a_device_that_has_gone_is_dropped_and_the_others_go_on():
    backend = SimulatedBackend((("cuda", 2), ("hip", 1)))
    sampler = DeviceSampler(inventory_of(backend))
    sampler.poll()

    backend.unplug("sim-cuda:1")
    taken = sampler.poll()

    assert [s.device_id for s in taken] == ["sim-cuda:0", "sim-hip:0"]
    assert [d.id for d in sampler.inventory.devices] == ["sim-cuda:0", "sim-hip:0"]
    assert sampler.history("sim-cuda:1") == [] and len(sampler.history("sim-cuda:0")) == 2
    assert [s.device_id for s in sampler.poll()] == ["sim-cuda:0", "sim-hip:0"]


def test_a_device_gone_says_so_by_its_error_when_its_backend_cannot_rescan():
    class LostOnRead(CountingBackend):
        def has_gone(self, error):
            return "lost" in str(error)

    sampler = DeviceSampler(inventory_of(LostOnRead(broken={"cuda:0"})))

    sampler.poll()

    assert [d.id for d in sampler.inventory.devices] == ["cuda:1"]


def test_a_flaky_reading_does_not_make_a_device_gone():
    sampler = DeviceSampler(inventory_of(CountingBackend(broken={"cuda:0"})))
    before = sampler.inventory

    sampler.poll()

    assert sampler.inventory is before


def test_a_device_that_appears_is_sampled_from_the_next_round():
    backend = SimulatedBackend((("cuda", 1), ("hip", 1)))
    sampler = DeviceSampler(inventory_of(backend), history=5)
    sampler.poll()

    backend.plug("cuda")
    sampler.poll()
    taken = sampler.poll()

    assert [d.id for d in sampler.inventory.devices] == ["sim-cuda:0", "sim-cuda:1", "sim-hip:0"]
    assert [s.device_id for s in taken] == ["sim-cuda:0", "sim-cuda:1", "sim-hip:0"]
    assert len(sampler.history("sim-cuda:1")) == 1 and len(sampler.history("sim-cuda:0")) == 3


class AbsentVendor(Backend):
    """A vendor backend whose library is not there."""

    name = "hip"

    def discover(self):
        from backends.base import BackendUnavailable

        raise BackendUnavailable("libamd_smi.so not found")

    def sample(self, device):
        raise AssertionError("never sampled")


def test_backends_discovered_on_the_thread_come_ahead_and_are_announced():
    cpu = Device(id="cpu", backend="cpu", name="CPU")

    class CpuOnly(CountingBackend):
        name = "cpu"

        def discover(self):
            return [cpu]

    host = CpuOnly()
    gpus = CountingBackend()
    sampler = DeviceSampler(
        inventory_of(host), interval_s=0.01, discover_first=(gpus, AbsentVendor())
    )
    assert [d.id for d in sampler.inventory.devices] == ["cpu"]  # nothing discovered yet
    changed = threading.Event()
    sampler.on_devices_changed(changed.set)
    sampler.start()
    try:
        assert changed.wait(5)
        assert [d.id for d in sampler.inventory.devices] == ["cuda:0", "cuda:1", "cpu"]
        assert [u.backend for u in sampler.inventory.unavailable] == ["hip"]
        deadline = time.monotonic() + 5
        while not sampler.history("cuda:1") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sampler.history("cuda:1")  # sampled like any other device
    finally:
        sampler.stop()
    sampler.discover_pending()  # once only: nothing more to find
    assert [d.id for d in sampler.inventory.devices] == ["cuda:0", "cuda:1", "cpu"]


def test_a_device_sampler_is_the_sample_feed_a_run_records_from():
    from backends.sampler import SampleFeed

    sampler = DeviceSampler(inventory_of(CountingBackend()))
    assert isinstance(sampler, SampleFeed)
    got = []
    undo = sampler.subscribe(got.append)
    sampler.phase = "decode"
    sampler.poll()
    undo()
    sampler.poll()
    assert [s.phase for s in got] == ["decode", "decode"]  # one reading per device, then none
