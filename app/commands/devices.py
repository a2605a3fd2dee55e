"""`specdeck devices`: every device and its telemetry, as a table, as JSON, or live."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from datetime import UTC, datetime

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from app.inventory import open_inventory
from backends.base import Device, ProcessInfo, Sample
from backends.discovery import Inventory

NA = "n/a"
PIPED_WIDTH = 160


def take_samples(inventory: Inventory) -> dict[str, Sample]:
    """One reading per device; a device whose reading fails shows every metric as missing."""
    samples = {}
    for device in inventory.devices:
        try:
            samples[device.id] = inventory.sample(device)
        except Exception:  # one failing GPU must not hide the others
            samples[device.id] = Sample(device_id=device.id, time=time.time())
    return samples


def device_document(device: Device, sample: Sample) -> dict:
    """One device of `specdeck devices --json` (DESIGN.md); a metric not reported is null."""
    total = sample.memory_total_bytes
    return {
        "id": device.id,
        "host": device.host or socket.gethostname(),  # with --cluster, the node it sits on
        "backend": device.backend,
        "name": device.name,
        "simulated": device.simulated,
        "memory_used_bytes": sample.memory_used_bytes,
        "memory_total_bytes": total if total is not None else device.memory_total_bytes,
        "utilization_percent": sample.utilization_percent,
        "power_watts": sample.power_watts,
        "power_limit_watts": sample.power_limit_watts,
        "temperature_c": sample.temperature_c,
        "pci_bus_id": device.pci_bus_id,
        "uuid": device.uuid,
        "processes": [
            {"pid": p.pid, "name": p.name, "memory_bytes": p.memory_bytes} for p in sample.processes
        ],
    }


def inventory_document(inventory: Inventory, samples: dict[str, Sample]) -> dict:
    """The whole `specdeck devices --json` document."""
    return {
        "host": socket.gethostname(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "devices": [device_document(d, samples[d.id]) for d in inventory.devices],
        "unavailable": [{"backend": u.backend, "reason": u.reason} for u in inventory.unavailable],
    }


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.1f}" if value is not None else NA


def _pair(used: str, total: str, unit: str) -> Text:
    if used == NA and total == NA:
        return Text(NA, style="dim")
    return Text(f"{used}/{total} {unit}")


def _value(value: float | None, fmt: str) -> Text:
    return Text(fmt.format(value)) if value is not None else Text(NA, style="dim")


def _processes(device: Device, processes: tuple[ProcessInfo, ...]) -> Text:
    if device.backend == "cpu":
        return Text("-", style="dim")
    if not processes:
        return Text("none", style="dim")
    lines = [
        f"{p.pid} {p.name or NA} {_gib(p.memory_bytes)}"
        + (" GiB" if p.memory_bytes is not None else "")
        for p in processes
    ]
    return Text("\n".join(lines))


def devices_table(inventory: Inventory, samples: dict[str, Sample]) -> Group:
    """The table of `specdeck devices`, followed by one line per unavailable backend."""
    table = Table(
        title=f"specdeck devices on {socket.gethostname()}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("device", no_wrap=True)
    table.add_column("name, bus id, uuid", min_width=16, ratio=3, overflow="fold")
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("util", justify="right", no_wrap=True)
    table.add_column("power", justify="right", no_wrap=True)
    table.add_column("temp", justify="right", no_wrap=True)
    table.add_column("processes", min_width=12, ratio=2, overflow="fold")
    for device in inventory.devices:
        sample = samples[device.id]
        doc = device_document(device, sample)
        ident = Text(device.id, style="magenta" if device.simulated else "bold")
        ident.append(f"\n{device.backend}", style="dim")
        if device.simulated:
            ident.append("\nsimulated", style="italic magenta")
        about = Text(device.name)
        for extra in (device.pci_bus_id, device.uuid):
            if extra:
                about.append(f"\n{extra}", style="dim")
        power, limit = sample.power_watts, sample.power_limit_watts
        table.add_row(
            ident,
            about,
            _pair(_gib(doc["memory_used_bytes"]), _gib(doc["memory_total_bytes"]), "GiB"),
            _value(sample.utilization_percent, "{:.0f}%"),
            _pair(
                f"{power:.0f}" if power is not None else NA,
                f"{limit:.0f}" if limit is not None else NA,
                "W",
            ),
            _value(sample.temperature_c, "{:.0f}°C"),
            _processes(device, sample.processes),
        )
    notes = [Text(f"{u.backend}: {u.reason}", style="yellow") for u in inventory.unavailable]
    return Group(table, *notes)


def _console() -> Console:
    """A console; piped output gets a wide one so bus ids and UUIDs are not cut."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, PIPED_WIDTH))
    return console


def main(args: argparse.Namespace) -> int:
    """Print the devices once, or refresh them every `--watch` seconds until Ctrl-C."""
    if args.watch is not None and not args.watch > 0:
        print(
            f"specdeck: --watch needs a positive number of seconds, not {args.watch}",
            file=sys.stderr,
        )
        return 2
    inventory = open_inventory(args)
    try:
        if args.json:
            return _print_json(inventory, args.watch)
        console = _console()
        if args.watch is None:
            console.print(devices_table(inventory, take_samples(inventory)))
            return 0
        with Live(
            devices_table(inventory, take_samples(inventory)), console=console, auto_refresh=False
        ) as live:
            while True:
                time.sleep(args.watch)
                live.update(devices_table(inventory, take_samples(inventory)), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        inventory.close()


def _print_json(inventory: Inventory, watch: float | None) -> int:
    """One document; with --watch, one compact document per line until Ctrl-C."""
    if watch is None:
        print(json.dumps(inventory_document(inventory, take_samples(inventory)), indent=2))
        return 0
    while True:
        print(json.dumps(inventory_document(inventory, take_samples(inventory))), flush=True)
        time.sleep(watch)
