"""The target daemon as a real process: a `start` it cannot run is refused before `ok`,
malformed messages get error replies, and it goes on serving."""

import msgpack
import pytest

from ipc import codec
from tests.ipc.conftest import Peer

GOOD_START = {
    "prompt": "def add(a, b):\n    return",
    "max_new_tokens": 8,
    "k": 3,
    "temperature": 0.0,
    "seed": 0,
    "baseline": False,
}


def _run_to_done(live, peer, **change):
    reply = peer.ask(codec.encode("start", {**GOOD_START, **change}, id=99))
    assert reply.type == "ok", reply.fields
    return live.event("done")["result"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"k": 0}, "k must be"),
        ({"k": codec.MAX_DRAFT_TOKENS + 1}, "k must be"),
        ({"k": "fast"}, "k must be"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 1e-40}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"prompt": ""}, "empty"),
        ({"max_new_tokens": 2048}, "context of 2048"),
        ({"prompt": "hello " * 3000}, "context of 2048"),
    ],
)
def test_a_start_it_cannot_run_is_refused_before_ok(demo_target_daemon, change, says):
    live = demo_target_daemon
    peer = Peer(live.endpoint)
    reply = peer.ask(codec.encode("start", {**GOOD_START, **change}, id=7))
    peer.close()
    assert reply.type == "error", f"accepted {change}"
    assert (reply["code"], reply.id) == ("bad-value", 7)
    assert says in reply["text"]
    # no run began: nothing but heartbeats and status lines on the telemetry socket
    refused = {i.message.type for i in live.drain() if i.message is not None}
    assert refused <= {"heartbeat", "status", "log"}


def test_the_daemon_runs_a_good_start_after_refusing_bad_ones(demo_target_daemon):
    live = demo_target_daemon
    peer = Peer(live.endpoint)
    for bad in ({"k": 0}, {"max_new_tokens": 0}, {"seed": -1}):
        assert peer.ask(codec.encode("start", {**GOOD_START, **bad}, id=1))["code"] == "bad-value"
    result = _run_to_done(live, peer)
    peer.close()
    assert result["new_tokens"] == GOOD_START["max_new_tokens"]
    assert not [i for i in live.heard if i.message is not None and i.message.type == "error"]


def _header(**fields) -> bytes:
    return msgpack.packb({"v": codec.PROTOCOL_VERSION, "id": 5, **fields})


MALFORMED = [
    # an array whose name is a list: a dict lookup raised TypeError and killed the daemon
    [_header(type="start", arrays=[[["prompt_ids"], "<i8", [1]]]), b"\x00" * 8],
    # a shape of 2**64 elements, which wraps to 0 in int64 and matched an empty frame
    [_header(type="begin", temperature=0.0, seed=0, arrays=[["prompt_ids", "<i8", [2**16] * 4]])],
    [
        _header(type="begin", temperature=0.0, seed=0, arrays=[["prompt_ids", "<i8", [2**16] * 4]]),
        b"",
    ],
    [_header(type="start", **{**GOOD_START, "prompt": ["a"]})],
    [b"\xc1"],
    [b""],
]


@pytest.mark.parametrize("frames", MALFORMED)
def test_a_malformed_message_gets_an_error_and_the_daemon_goes_on(demo_target_daemon, frames):
    live = demo_target_daemon
    peer = Peer(live.endpoint)
    reply = peer.ask(frames)
    assert reply.type == "error" and reply["code"] in ("bad-frame", "bad-field", "bad-array")
    assert peer.ask(codec.encode("hello", id=2)).type == "welcome"
    peer.close()
    assert live.alive()
