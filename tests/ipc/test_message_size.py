"""A frame larger than any legal message is refused by the receiving socket, not read."""

import zmq

from ipc import codec
from ipc.supervisor import Supervisor
from tests.ipc.conftest import Peer

HUGE = 200 * 2**20


def _first_reply_after(peer: Peer, huge: bytes) -> codec.Message:
    """Send a huge frame, then hellos until one is answered; return the first reply heard."""
    peer.sock.send(huge)
    for attempt in range(1, 120):
        peer.sock.send_multipart(codec.encode("hello", id=attempt))
        if peer.sock.poll(1000):
            return codec.decode(peer.sock.recv_multipart())
    raise AssertionError("the daemon never answered again")


def test_a_200_mb_request_is_refused_by_the_daemons_socket(demo_draft_daemon):
    peer = Peer(demo_draft_daemon.endpoint)
    reply = _first_reply_after(peer, bytes(HUGE))
    peer.close()
    # read and answered, it would have been a bad-frame error; refused, it gets nothing
    assert reply.type == "welcome", reply.fields
    assert demo_draft_daemon.alive()


def test_every_socket_that_reads_peers_caps_its_frames():
    from ipc.remote_drafter import RemoteDrafter

    sup = Supervisor()
    try:
        assert sup.telemetry.getsockopt(zmq.MAXMSGSIZE) == codec.MAX_FRAME_BYTES
        remote = RemoteDrafter(sup.endpoint("nobody"))
        assert remote._sock.getsockopt(zmq.MAXMSGSIZE) == codec.MAX_FRAME_BYTES
        remote.close()
    finally:
        sup.stop()
