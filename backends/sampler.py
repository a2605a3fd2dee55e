"""A thread that polls every device at an interval into bounded per-device histories."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from backends.base import PHASES, Backend, Sample
from backends.discovery import Inventory, discover

log = logging.getLogger(__name__)


@runtime_checkable
class SampleFeed(Protocol):
    """What a run needs of a device sampler (`DeviceSampler` fills it in; tests fake it)."""

    phase: str  # stamped on each sample from now on: idle, load, prefill or decode

    def subscribe(self, callback: Callable[[Sample], None]) -> Callable[[], None]:
        """Call `callback(sample)` for each new sample; returns an undo."""
        ...


class DeviceSampler:
    """Polls an inventory's devices, stamps each sample with the run phase, keeps the last N."""

    def __init__(
        self,
        inventory: Inventory,
        interval_s: float = 1.0,
        history: int = 120,
        discover_first: Sequence[Backend] = (),
    ) -> None:
        """`discover_first`: backends whose devices the thread discovers before its first
        poll, ahead of the inventory's (the dashboard's GPUs: their libraries' imports and
        start-up stay off the path to the first frame)."""
        if interval_s <= 0 or history < 1:
            raise ValueError("interval_s must be positive and history at least 1")
        self.inventory = inventory  # the devices there now: replaced when one goes or comes
        self._discover_first = tuple(discover_first)
        self._on_devices: list[Callable[[], None]] = []
        self.interval_s = interval_s
        self._keep = history
        self._history = {d.id: deque(maxlen=history) for d in inventory.devices}
        self._phase = "idle"
        self._subscribers: list[Callable[[Sample], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def phase(self) -> str:
        """The run phase stamped on each new sample: idle, load, prefill or decode."""
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        self._phase = phase
        self.inventory.set_phase(phase)

    def subscribe(self, callback: Callable[[Sample], None]) -> Callable[[], None]:
        """Call `callback(sample)` from the sampler thread for each new sample; returns an undo."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def on_devices_changed(self, callback: Callable[[], None]) -> None:
        """Call `callback()` from the sampler thread whenever the device list changes."""
        with self._lock:
            self._on_devices.append(callback)

    def discover_pending(self) -> None:
        """Discover the `discover_first` backends now (once), ahead of the other devices."""
        backends, self._discover_first = self._discover_first, ()
        if backends:
            self._follow(self.inventory.after(discover(None, backends)))

    def latest(self, device_id: str) -> Sample | None:
        """The newest sample of a device, or None before its first."""
        with self._lock:
            samples = self._history.get(device_id)
            return samples[-1] if samples else None

    def history(self, device_id: str) -> list[Sample]:
        """A device's samples, oldest first, at most `history` of them."""
        with self._lock:
            return list(self._history.get(device_id, ()))

    def poll(self) -> list[Sample]:
        """Sample every device once; a device whose reading fails is skipped this round, one
        that has gone is dropped, and devices a backend finds anew are sampled from now on."""
        phase = self._phase
        inventory = self.inventory
        taken, gone = [], []
        for device in inventory.devices:
            try:
                sample = inventory.sample(device)
            except Exception as exc:  # one flaky device must not stop the others
                if inventory.has_gone(device, exc):
                    log.info("%s has gone: %s", device.id, exc)
                    gone.append(device.id)
                else:
                    log.debug("sampling %s failed: %s", device.id, exc)
                continue
            sample = dataclasses.replace(sample, phase=phase)
            with self._lock:
                self._history[device.id].append(sample)
                subscribers = list(self._subscribers)
            for callback in subscribers:
                try:
                    callback(sample)
                except Exception:  # a broken listener must not stop the sampling
                    log.exception("device sample subscriber failed")
            taken.append(sample)
        self._follow(inventory.without(gone).rescanned())
        return taken

    def _follow(self, inventory: Inventory) -> None:
        """Take up a changed device list: gone devices' histories end, new ones' begin."""
        if inventory is self.inventory:
            return
        with self._lock:
            self._history = {
                d.id: self._history.get(d.id, deque(maxlen=self._keep)) for d in inventory.devices
            }
            self.inventory = inventory
            listeners = list(self._on_devices)
        for callback in listeners:
            try:
                callback()
            except Exception:  # a broken listener must not stop the sampling
                log.exception("device list listener failed")

    def start(self) -> None:
        """Start polling on a daemon thread (no-op if already running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="specdeck-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop polling and wait for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        self.discover_pending()
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
