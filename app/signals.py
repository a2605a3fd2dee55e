"""SIGTERM and SIGHUP end specdeck the way Ctrl+C does: the run stops and its record is kept."""

from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised where Ctrl+C's KeyboardInterrupt would be."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_stop_signals() -> None:
    """Make SIGTERM and SIGHUP raise `Terminated` in the main thread, as SIGINT does."""

    def stop(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def call_on_stop_signals(callback: Callable[[int], None]) -> None:
    """Call `callback(signum)` on SIGTERM and SIGHUP (for an event loop that must not be
    interrupted by an exception)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: callback(signum))


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """130 for Ctrl+C, 128 + the signal's number for SIGTERM (143) and SIGHUP (129)."""
    return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT)
