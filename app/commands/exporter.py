"""`specdeck exporter`: Prometheus `/metrics` of this machine's devices and of every live run.

Devices (every node's with `--cluster`) are read by a sampler of their own; runs are found in
the run directories and read through their watch endpoints (`ipc.watch`), so any run started
on this host shows, whoever started it.
Never imports torch or Textual.
"""

from __future__ import annotations

import argparse
import sys
import threading

SCAN_S = 1.0  # how often new runs are looked for
SAMPLE_S = 1.0  # how often the devices are read


def main(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    from app.config import data_dir
    from app.exporter import MetricsExporter, WatchedRuns
    from app.inventory import open_inventory
    from backends.sampler import DeviceSampler

    inventory = open_inventory(args)  # with --cluster, every node's devices
    sampler = DeviceSampler(inventory, interval_s=SAMPLE_S, history=1)
    exporter = MetricsExporter(sampler)
    watched = WatchedRuns(exporter, data_dir())
    try:
        server = exporter.serve(args.host, args.port, option="--port")
        sampler.start()
        print(f"specdeck: serving {server.url}", file=sys.stderr, flush=True)
        idle = threading.Event()  # never set: the loop ends by Ctrl-C or SIGTERM
        while True:
            watched.scan()
            idle.wait(SCAN_S)
    finally:
        watched.close()
        exporter.close()
        sampler.stop()
        inventory.close()
