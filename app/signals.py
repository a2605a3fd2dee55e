"""SIGTERM and SIGHUP end specdeck the way Ctrl+C does: the run stops and its record is kept."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised where Ctrl+C's KeyboardInterrupt would be."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def raising_on_stop_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise `Terminated` in the main thread, as SIGINT does;
    the handlers before are put back after (main() may be called as a library)."""

    def stop(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    before = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def call_on_stop_signals(callback: Callable[[int], None]) -> None:
    """Call `callback(signum)` on SIGTERM and SIGHUP (for an event loop that must not be
    interrupted by an exception)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: callback(signum))


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """130 for Ctrl+C, 128 + the signal's number for SIGTERM (143) and SIGHUP (129)."""
    return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT)
