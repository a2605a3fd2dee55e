"""`specdeck` with no subcommand: the terminal dashboard (never imports torch)."""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
from typing import Any


def build_app(args: argparse.Namespace, app_class: Any = None) -> Any:
    """The dashboard over the discovered devices; bad options raise one-line user errors."""
    from textual.theme import BUILTIN_THEMES

    from app.config import ConfigError, load_config
    from app.inventory import cluster_backend
    from backends.cpu import CpuBackend
    from backends.discovery import discover, vendor_backends
    from backends.sampler import DeviceSampler
    from themes.specdeck import THEMES

    config = load_config(args.config)
    names = [t.name for t in THEMES] + list(BUILTIN_THEMES)
    if args.theme and args.theme not in names:
        known = ", ".join(t.name for t in THEMES)
        raise ConfigError(f"unknown theme {args.theme!r} (known: {known}, and Textual's own)")
    theme = args.theme or config.theme
    if theme not in names:
        theme = None  # a stale name in the config falls back to the default
    # the CPU and simulated devices now; the GPUs on the sampler's thread after the first
    # frame (importing and starting NVML and amdsmi: ≈0.17 s on the lent GPU host, docs/devices.md)
    # with --cluster, every node's devices, found on the sampler's thread too (Ray's import
    # and joining take seconds; docs/cluster.md)
    cluster = cluster_backend(args)
    if cluster is not None:
        cluster.start_early()  # joining overlaps the first frame
    inventory = discover(args.simulate, backends=(CpuBackend(),) if cluster is None else ())
    sampler = DeviceSampler(
        inventory,
        interval_s=1.0,
        history=120,
        discover_first=vendor_backends() if cluster is None else (cluster,),
    )
    extra = {}
    if getattr(args, "metrics_port", None) is not None:  # a busy port: exit 2 before drawing
        from app.exporter import LOCALHOST, MetricsExporter

        extra["metrics"] = MetricsExporter(sampler)
        extra["metrics"].serve(LOCALHOST, args.metrics_port, option="--metrics-port")
    if app_class is None:
        from app.dashboard import DashboardApp as app_class
    freeze_startup_heap()
    return app_class(
        config,
        inventory,
        sampler,
        model_dirs=[str(d) for d in getattr(args, "models_dir", None) or []],
        theme=theme,
        **extra,
    )


QUIT_DEADLINE_S = 30.0  # stopping a run takes up to 15 s; a terminal that is gone may hang


def _end_after(signum: int) -> None:
    """End the process if the quit a signal asked for has not ended it in time (the terminal
    it drew on is gone, say); the run was stopped on the way, its record kept."""
    time.sleep(QUIT_DEADLINE_S)
    os._exit(128 + signum)


def freeze_startup_heap() -> None:
    """Keep the garbage collector off the objects every import so far has made.

    Modules, classes and functions live as long as the process; left in the collector's
    oldest generation, the first full collection walks them all (≈40 ms on the reference VM)
    while the first frame is being drawn. Frozen, they are never walked again.
    """
    gc.freeze()


def main(args: argparse.Namespace) -> int:
    """Run the dashboard until the user quits, or until SIGTERM or SIGHUP (then as `q` does)."""
    from app.signals import Terminated, call_on_stop_signals, exit_status

    app = build_app(args)
    received: list[int] = []

    def quit_on_signal(signum: int) -> None:
        # never raise here: an exception thrown into Textual's threads' queues mid-operation
        # can deadlock its shutdown; hand the quit to the loop, and make sure it ends
        received.append(signum)
        if app._loop is not None:
            # the handler runs between two bytecodes of the loop's thread: hand over, safely
            app._loop.call_soon_threadsafe(app.exit)
        if len(received) == 1:
            threading.Thread(
                target=_end_after, args=(signum,), name="signal-deadline", daemon=True
            ).start()

    call_on_stop_signals(quit_on_signal)
    try:
        app.run()
    finally:
        app.sampler.stop()
        app.inventory.close()
        if getattr(app, "metrics", None) is not None:
            app.metrics.close()
    if received:
        return exit_status(Terminated(received[0]))
    return app.return_code or 0
