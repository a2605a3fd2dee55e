"""`specdeck devices`: the JSON contract, the table, --watch, and bad --simulate specs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from tests.backends.fake_amdsmi import FakeAmdGpu, make_amdsmi, process_entry
from tests.backends.fake_pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, make_pynvml

ROOT = Path(__file__).resolve().parents[2]
DEVICE_KEYS = {
    "id",
    "backend",
    "name",
    "simulated",
    "memory_used_bytes",
    "memory_total_bytes",
    "utilization_percent",
    "power_watts",
    "power_limit_watts",
    "temperature_c",
    "pci_bus_id",
    "uuid",
    "processes",
}


@pytest.fixture
def vendor_fakes(monkeypatch):
    """One H100 without power readings, one MI300X with a process: via sys.modules."""
    nv = make_pynvml([FakeGpu(not_supported={"nvmlDeviceGetPowerUsage"})])
    smi = make_amdsmi([FakeAmdGpu(processes=[process_entry(4242, "python3", 2**30)])])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.setitem(sys.modules, "amdsmi", smi)
    return nv, smi


@pytest.fixture
def no_vendor_libraries(monkeypatch):
    """NVML's library missing, amdsmi's package missing."""
    nv = make_pynvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.setitem(sys.modules, "amdsmi", None)


def test_json_document_has_the_contract_keys(vendor_fakes, capsys):
    assert main(["devices", "--json", "--simulate", "cuda:2,hip:1"]) == 0

    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"host", "time", "devices", "unavailable"}
    assert doc["unavailable"] == []
    devices = {d["id"]: d for d in doc["devices"]}
    assert list(devices) == ["cuda:0", "hip:0", "cpu", "sim-cuda:0", "sim-cuda:1", "sim-hip:0"]
    assert all(set(d) >= DEVICE_KEYS for d in doc["devices"])

    cuda = devices["cuda:0"]
    assert cuda["power_watts"] is None  # not reported: null, never 0
    assert cuda["power_limit_watts"] == 700.0
    assert cuda["pci_bus_id"] == "00000000:17:00.0"
    assert cuda["uuid"].startswith("GPU-")
    assert devices["hip:0"]["processes"] == [
        {"pid": 4242, "name": "python3", "memory_bytes": 2**30}
    ]
    assert devices["cpu"]["power_watts"] is None
    sim = devices["sim-hip:0"]
    assert (sim["backend"], sim["simulated"], sim["name"]) == (
        "hip",
        True,
        "Simulated AMD Instinct MI300X",
    )
    assert not devices["cuda:0"]["simulated"]


def test_json_says_why_vendor_devices_are_absent(no_vendor_libraries, capsys):
    assert main(["devices", "--json"]) == 0

    doc = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in doc["devices"]] == ["cpu"]
    assert doc["unavailable"] == [
        {"backend": "cuda", "reason": "NVML library not found (libnvidia-ml.so.1)"},
        {"backend": "hip", "reason": "amdsmi Python package not installed"},
    ]


def test_table_shows_na_simulated_marks_and_reasons(no_vendor_libraries, capsys):
    assert main(["--simulate", "cuda:1", "devices"]) == 0

    out = capsys.readouterr().out
    assert "sim-cuda:0" in out and "simulated" in out
    assert "Simulated NVIDIA H100 80GB HBM3" in out
    assert "n/a" in out  # the CPU reports no power
    assert "cuda: NVML library not found (libnvidia-ml.so.1)" in out
    assert "hip: amdsmi Python package not installed" in out


def test_table_lists_processes_bus_ids_and_uuids(vendor_fakes, capsys):
    assert main(["devices"]) == 0

    out = capsys.readouterr().out
    assert "00000000:17:00.0" in out and "GPU-8f6e1c2a-3b4d-5e6f-7a8b-9c0d1e2f3a4b" in out
    assert "4242 python3 1.0 GiB" in out


def test_watch_refreshes_until_ctrl_c_and_exits_quietly(no_vendor_libraries, monkeypatch, capsys):
    ticks = []

    def sleep(seconds):
        if seconds != 0.5:  # psutil's own short wait for the first CPU reading
            return
        ticks.append(seconds)
        if len(ticks) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("app.commands.devices.time.sleep", sleep)

    assert main(["devices", "--watch", "0.5", "--simulate", "hip:1"]) == 0

    captured = capsys.readouterr()
    assert ticks == [0.5, 0.5]
    assert "sim-hip:0" in captured.out and captured.err == ""


@pytest.mark.parametrize(
    "spec", ["cuda:x", "tpu:1", "cuda:0", "cuda:2,,hip:1", ",", "cuda:1,cuda:1"]
)
def test_bad_simulate_spec_is_one_line_and_status_2(spec, capsys):
    assert main(["devices", "--simulate", spec]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("specdeck: bad --simulate spec")


def test_watch_needs_a_positive_interval(capsys):
    assert main(["devices", "--watch", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_real_subprocess_prints_clean_json():
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "devices", "--json", "--simulate", "cuda:2,hip:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    ids = [d["id"] for d in doc["devices"]]
    assert ids[-3:] == ["sim-cuda:0", "sim-cuda:1", "sim-hip:0"]
    assert "cpu" in ids
    for backend in ("cuda", "hip"):
        found = any(d["backend"] == backend and not d["simulated"] for d in doc["devices"])
        explained = any(u["backend"] == backend for u in doc["unavailable"])
        assert found or explained or backend == "hip"


def test_the_devices_command_never_imports_torch():
    code = (
        "import sys, app, app.cli, app.commands.devices, backends.sampler, backends.visibility\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
