"""Simulated devices: the spec, the devices, and telemetry that moves with the run phase."""

import pytest

from backends.base import BadSimulateSpec, DeviceGone
from backends.simulated import SimulatedBackend, parse_simulate_spec


class Clock:
    """A monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def simulated(spec: str, clock: Clock) -> tuple[SimulatedBackend, list]:
    backend = SimulatedBackend(parse_simulate_spec(spec), clock=clock)
    return backend, backend.discover()


def test_spec_parses_vendor_counts():
    assert parse_simulate_spec("cuda:2,hip:1") == (("cuda", 2), ("hip", 1))
    assert parse_simulate_spec(" hip : 3 ") == (("hip", 3),)


@pytest.mark.parametrize(
    "spec", ["cuda:x", "tpu:1", "cuda:0", "", "cuda:2,,hip:1", "cuda", "cuda:1,cuda:2", "cuda:-1"]
)
def test_bad_spec_is_one_line_user_error(spec):
    with pytest.raises(BadSimulateSpec) as raised:
        parse_simulate_spec(spec)

    message = str(raised.value)
    assert "\n" not in message and "--simulate" in message


def test_devices_have_ids_that_cannot_collide_and_realistic_names():
    _, devices = simulated("cuda:2,hip:1", Clock())

    assert [d.id for d in devices] == ["sim-cuda:0", "sim-cuda:1", "sim-hip:0"]
    assert [d.backend for d in devices] == ["cuda", "cuda", "hip"]
    assert all(d.simulated for d in devices)
    assert devices[0].name == "Simulated NVIDIA H100 80GB HBM3"
    assert devices[2].name == "Simulated AMD Instinct MI300X"
    assert devices[0].memory_total_bytes == 81_559 * 2**20


def test_utilization_power_memory_and_then_temperature_follow_the_phase():
    clock = Clock()
    backend, (gpu, *_) = simulated("cuda:1", clock)
    idle = backend.sample(gpu)

    backend.set_phase("decode")
    clock.now += 10
    busy = backend.sample(gpu)
    clock.now += 120
    hot = backend.sample(gpu)

    assert idle.utilization_percent < 10 < 60 < busy.utilization_percent <= 100
    assert busy.power_watts > idle.power_watts + 200
    assert busy.memory_used_bytes > idle.memory_used_bytes + 20 * 2**30
    assert idle.temperature_c < busy.temperature_c < hot.temperature_c
    assert hot.power_watts <= hot.power_limit_watts == 700.0

    backend.set_phase("idle")
    clock.now += 10
    assert backend.sample(gpu).utilization_percent < 10


def test_telemetry_drifts_smoothly_and_stays_in_range():
    clock = Clock()
    backend, (gpu,) = simulated("hip:1", clock)
    backend.set_phase("prefill")
    previous = backend.sample(gpu)
    for _ in range(200):
        clock.now += 0.25
        sample = backend.sample(gpu)
        assert 0 <= sample.utilization_percent <= 100
        assert 0 < sample.memory_used_bytes <= sample.memory_total_bytes
        assert abs(sample.temperature_c - previous.temperature_c) < 2
        previous = sample


def test_devices_differ_from_each_other_but_repeat_across_runs():
    one, (a0, a1) = simulated("cuda:2", Clock())
    two, (b0, _) = simulated("cuda:2", Clock())

    assert one.sample(a0).memory_used_bytes == two.sample(b0).memory_used_bytes
    assert one.sample(a0).memory_used_bytes != one.sample(a1).memory_used_bytes


def test_an_unplugged_device_stops_answering_and_leaves_the_rescan():
    backend, (c0, c1, h0) = simulated("cuda:2,hip:1", Clock())

    backend.unplug("sim-cuda:0")

    with pytest.raises(DeviceGone):
        backend.sample(c0)
    assert backend.has_gone(DeviceGone("sim-cuda:0"))
    assert not backend.has_gone(RuntimeError("a passing failure"))
    assert backend.rescan() == [c1, h0]
    assert backend.sample(c1).device_id == "sim-cuda:1"
    with pytest.raises(ValueError, match="no simulated device"):
        backend.unplug("sim-cuda:0")


def test_a_plugged_device_takes_the_first_free_index_and_answers():
    backend, (c0, c1) = simulated("cuda:2", Clock())
    backend.unplug("sim-cuda:0")

    again = backend.plug("cuda")
    hip = backend.plug("hip")

    assert (again.id, hip.id) == ("sim-cuda:0", "sim-hip:0")
    assert backend.rescan() == [again, c1, hip]
    assert backend.sample(hip).power_limit_watts == 750.0
    with pytest.raises(ValueError, match="unknown vendor"):
        backend.plug("tpu")
