"""Live daemons for the protocol tests: real processes on the CPU with the bundled demo pair.

Each module starts its own and stops them when it ends: no test elsewhere sees them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import zmq

from backends.base import Device
from ipc import codec
from ipc.launch import PlacedRole, daemon_launch
from ipc.supervisor import Incoming, Supervisor

CPU = Device("cpu", "cpu", "host CPU")


def demo_role(role: str) -> PlacedRole:
    """One role of the bundled demo pair, placed on the CPU."""
    from engine.catalog import demo_pair

    target, draft = demo_pair()
    return PlacedRole(role, str(target.path if role == "target" else draft.path), (CPU,))


class Peer:
    """A DEALER on a daemon's control socket that sends raw frames and reads replies."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def ask(self, frames: list[bytes], timeout_s: float = 60.0) -> codec.Message:
        """Send one message and return the decoded reply (the test fails without one)."""
        self.sock.send_multipart(frames)
        return self.reply(timeout_s)

    def reply(self, timeout_s: float = 60.0) -> codec.Message:
        assert self.sock.poll(int(timeout_s * 1000)), "the daemon stopped answering"
        return codec.decode(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close()


class LiveDaemon:
    """One started daemon with the supervisor that watches its telemetry."""

    def __init__(self, supervisor: Supervisor, role: str) -> None:
        self.supervisor = supervisor
        self.role = role
        self.daemon = supervisor.daemons[role]
        self.endpoint = self.daemon.spec.control_endpoint
        self.heard: list[Incoming] = []

    def alive(self) -> bool:
        return self.daemon.popen.poll() is None

    def wait_for(self, found: Callable[[Incoming], bool], timeout_s: float = 120.0) -> Incoming:
        """Read telemetry and replies until one matches; fail if the daemon exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for incoming in self.supervisor.poll(0.2):
                self.heard.append(incoming)
                if found(incoming):
                    return incoming
            assert self.alive(), f"the {self.role} daemon exited: {self.daemon.log_tail(5)}"
        raise AssertionError(f"nothing matched within {timeout_s} s")

    def event(self, type_: str, timeout_s: float = 120.0, **where) -> codec.Message:
        """The next telemetry event of this type whose fields have these values."""
        return self.wait_for(_event(type_, **where), timeout_s).message

    def drain(self) -> list[Incoming]:
        """What the supervisor has heard by now, read without waiting."""
        got = self.supervisor.poll(0)
        self.heard.extend(got)
        return got


def _start(role: str, local_draft: PlacedRole | None = None) -> tuple[Supervisor, LiveDaemon]:
    sup = Supervisor()
    launch = daemon_launch(
        demo_role(role), sup.site, run_id="test", backend_python={}, local_draft=local_draft
    )
    sup.start(launch)
    live = LiveDaemon(sup, role)
    # the supervisor must keep reading: its SUB subscribes only when its socket is used
    is_ready = _event("status", state="ready")
    ready = any(is_ready(i) for i in live.drain())
    if not ready:
        live.wait_for(is_ready, timeout_s=180)
    return sup, live


def _event(type_: str, **where) -> Callable[[Incoming], bool]:
    def found(incoming: Incoming) -> bool:
        msg = incoming.message
        return (
            incoming.channel == "telemetry"
            and msg is not None
            and msg.type == type_
            and all(msg.fields.get(k) == v for k, v in where.items())
        )

    return found


@pytest.fixture(scope="module")
def demo_draft_daemon():
    """A draft daemon serving the bundled demo draft on the CPU."""
    sup, live = _start("draft")
    yield live
    sup.stop()


@pytest.fixture(scope="module")
def demo_target_daemon():
    """A target daemon holding the bundled demo target and, in-process, the demo draft."""
    sup, live = _start("target", local_draft=demo_role("draft"))
    yield live
    sup.stop()
