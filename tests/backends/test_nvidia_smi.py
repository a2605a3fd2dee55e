"""On a real NVIDIA machine, `specdeck devices --json` agrees with nvidia-smi."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUERY = "index,name,memory.total,pci.bus_id,uuid"


def normalise_bus_id(bus_id: str) -> str:
    """'00000000:17:00.0' and '0000:17:00.0' are the same GPU: 4-digit domain, lower case."""
    domain, _, rest = bus_id.strip().partition(":")
    return f"{int(domain, 16):04x}:{rest.lower()}"


@pytest.mark.gpu
def test_devices_json_matches_nvidia_smi():
    smi = subprocess.run(
        ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    ours = subprocess.run(
        [sys.executable, "-m", "app.cli", "devices", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    devices = {d["id"]: d for d in json.loads(ours.stdout)["devices"] if d["backend"] == "cuda"}
    rows = [[cell.strip() for cell in line.split(",")] for line in smi.stdout.strip().splitlines()]

    assert len(devices) == len(rows)
    for index, name, memory_mib, bus_id, uuid in rows:
        device = devices[f"cuda:{index}"]
        assert device["name"] == name
        assert abs(device["memory_total_bytes"] / 2**20 - float(memory_mib)) <= 1
        assert normalise_bus_id(device["pci_bus_id"]) == normalise_bus_id(bus_id)
        assert device["uuid"] == uuid
        assert device["utilization_percent"] is not None
        assert device["memory_used_bytes"] is not None
