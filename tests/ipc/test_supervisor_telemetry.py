"""The supervisor's telemetry socket: a malformed event is a problem it reports, never a crash."""

import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from ipc import codec
from ipc.daemon_runtime import DaemonSpec
from ipc.supervisor import Daemon, Supervisor


class FakeDaemonTelemetry:
    """An XPUB connected to the supervisor's telemetry socket, as a daemon's is."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.pub = zmq.Context.instance().socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(sup.telemetry_endpoint)
        deadline = time.monotonic() + 30
        while not self.pub.poll(100):  # the SUB subscribes once the supervisor uses its socket
            assert time.monotonic() < deadline, "the supervisor never subscribed"
            sup.poll(0)
        self.pub.recv()

    def heard(self, frames: list[bytes]):
        """Publish one message and return what the supervisor made of it."""
        self.pub.send_multipart(frames)
        got = self.sup.poll(30.0)
        assert len(got) == 1
        return got[0]

    def close(self) -> None:
        self.pub.close()


@pytest.fixture
def telemetry(tmp_path):
    """A supervisor that knows one target daemon (a process that only waits), and its XPUB."""
    sup = Supervisor()
    spec = DaemonSpec("target", "t", "m", ("cpu",), ("cpu",), "cpu", False, "", "", 0, False)
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    control = sup.ctx.socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 0)
    sup.daemons["target"] = Daemon(spec, waiting, control, tmp_path / "target.log")
    fake = FakeDaemonTelemetry(sup)
    yield fake
    fake.close()
    waiting.kill()
    waiting.wait()
    sup.stop()


def _header(**fields) -> bytes:
    return msgpack.packb({"v": codec.PROTOCOL_VERSION, "id": 0, **fields})


STEP = {
    "index": 0,
    "drafted": 1,
    "accepted": 1,
    "committed": 2,
    "draft_s": 0.0,
    "verify_s": 0.0,
    "transport_s": 0.0,
    "k": 1,
    "new_tokens": 3,
    "decode_s": 0.1,
    "text": "ab",
    "role": "target",
}


@pytest.mark.parametrize(
    "frames",
    [
        # the run-ending TypeError: unhashable type: 'list'
        [_header(type="step", **STEP, arrays=[[["token_ids"], "<i8", [2]]]), bytes(16)],
        [_header(type="status", role=["target"], state="ready", text="")],
        [_header(type="step", **STEP, arrays=[["token_ids", "<i8", [2**16] * 4]]), b""],
        [
            _header(type="step", **{**STEP, "drafted": 10**12, "accepted": 10**12}),
            np.arange(2).tobytes(),
        ],
        [_header(type="status", role="run", state="done", text="")],  # a role it never started
        [b"\xc1"],
    ],
)
def test_a_malformed_event_is_a_problem_the_supervisor_reports(telemetry, frames):
    incoming = telemetry.heard(frames)
    assert incoming.message is None and incoming.problem
    good = codec.encode("status", {"role": "target", "state": "ready", "text": ""})
    assert telemetry.heard(good).message["state"] == "ready"


def test_a_200_mb_event_is_refused_by_the_supervisors_socket(telemetry):
    telemetry.pub.send(bytes(200 * 2**20))
    good = codec.encode("status", {"role": "target", "state": "ready", "text": ""})
    heard = []
    deadline = time.monotonic() + 60
    while not any(i.message is not None for i in heard):
        assert time.monotonic() < deadline, "the supervisor never heard the good event"
        if telemetry.pub.poll(0):
            telemetry.pub.recv()  # the dropped publisher reconnects and is subscribed again
        telemetry.pub.send_multipart(good)
        heard += telemetry.sup.poll(0.2)
    # read, the frame would have been an unreadable event; refused, it was never read
    assert not [i.problem for i in heard if i.message is None]
