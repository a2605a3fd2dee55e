"""The draft daemon as a real process on a real ROUTER: garbage in, errors out, still serving."""

import random

import msgpack
import numpy as np
import pytest
import zmq

from backends.base import Device
from ipc import codec
from ipc.launch import PlacedRole, daemon_launch
from ipc.remote_drafter import DraftLinkError, RemoteDrafter
from ipc.supervisor import Supervisor

PROMPT = "def add(a, b):\n    return"


@pytest.fixture(scope="module")
def draft_daemon(tiny_pair):
    """(supervisor, endpoint) of a draft daemon serving the tiny draft model on the CPU."""
    sup = Supervisor()
    placed = PlacedRole("draft", str(tiny_pair[1]), (Device("cpu", "cpu", "host CPU"),))
    daemon = sup.start(daemon_launch(placed, sup.site, run_id="test", backend_python={}))
    drafter = RemoteDrafter(daemon.spec.control_endpoint, timeout_s=120)
    drafter.hello()  # ready once the model is loaded
    drafter.close()
    yield sup, daemon.spec.control_endpoint
    sup.stop()
    assert daemon.popen.poll() is not None


def _garbage(rng: random.Random) -> list[bytes]:
    """One malformed message; never a valid request (a stray valid shutdown would end the test)."""
    v = codec.PROTOCOL_VERSION
    kind = rng.randrange(9)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 64))]
    if kind == 1:
        return [rng.randbytes(rng.randrange(1, 16)) for _ in range(rng.randrange(2, 12))]
    if kind == 2:
        return [msgpack.packb(rng.choice([[1, 2], 7, "hello", None, 1.5, b"\x00"]))]
    if kind == 3:
        return [msgpack.packb({"v": rng.choice([0, 2, 99, "1", None]), "type": "hello", "id": 1})]
    if kind == 4:
        return [msgpack.packb({"v": v, "type": rng.choice(["", "HELLO", "pickle", 5]), "id": 2})]
    if kind == 5:
        type_, field = rng.choice([("propose", "k"), ("q_row", "position"), ("commit", "accepted")])
        bad = rng.choice(["six", 1.5, None, True, [1], {"a": 1}])
        fields = {"k": 1, "position": 0, "accepted": 0, "next_token": 1}
        fields = {f: fields[f] for f in codec.SCHEMAS[type_].required}
        return [msgpack.packb({"v": v, "type": type_, "id": 3, **fields, field: bad})]
    if kind == 6:
        n = rng.randrange(1, 5)
        dtype = rng.choice(["<i8", "<f4", "|O", ">i8", "<i2"])
        frame = rng.randbytes(n * 8 + rng.choice([1, -1, 3]) if dtype == "<i8" else n * 8)
        header = {
            "v": v,
            "type": "begin",
            "id": 4,
            "temperature": 0.0,
            "seed": 0,
            "arrays": [["prompt_ids", dtype, [n]]],
        }
        return [msgpack.packb(header), frame]
    if kind == 7:  # well-formed, but no session has begun
        type_, fields = rng.choice(
            [
                ("propose", {"k": 3}),
                ("q_row", {"position": 0}),
                ("commit", {"accepted": 0, "next_token": 1}),
            ]
        )
        return codec.encode(type_, fields, id=5)
    return [
        msgpack.packb(
            {
                "v": v,
                "type": rng.choice(["hello", "shutdown", "propose"]),
                "id": 6,
                "k": 1,
                "surprise": 1,
            }
        )
    ]


def test_ten_thousand_bad_messages_each_get_an_error_and_the_daemon_still_serves(
    draft_daemon, tiny_pair
):
    _, endpoint = draft_daemon
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    rng = random.Random(1234)
    codes: dict[str, int] = {}
    batch = 500
    for _ in range(10_000 // batch):
        for _ in range(batch):
            sock.send_multipart(_garbage(rng))
        for _ in range(batch):
            assert sock.poll(10_000), "the draft daemon stopped answering"
            reply = codec.decode(sock.recv_multipart())
            assert reply.type == "error", reply.fields
            codes[reply["code"]] = codes.get(reply["code"], 0) + 1
    sock.close()
    assert sum(codes.values()) == 10_000
    assert {"bad-frame", "version", "unknown-type", "bad-field", "bad-array", "state"} <= set(codes)

    # and then a real run through it gives what the in-process drafter gives
    from engine.catalog import resolve_model
    from engine.loading import load_model
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder

    target = load_model(resolve_model(str(tiny_pair[0])), ["cpu"])
    local = LocalDrafter(load_model(resolve_model(str(tiny_pair[1])), ["cpu"]))
    prompt = target.tokenizer(PROMPT)["input_ids"]
    remote = RemoteDrafter(endpoint, timeout_s=30)
    for temperature in (0.0, 0.8):
        want = SpeculativeDecoder(target, local, 4, temperature, 3).generate(prompt, 40)
        got = SpeculativeDecoder(target, remote, 4, temperature, 3).generate(prompt, 40)
        assert got.output_ids == want.output_ids
        assert [s.accepted for s in got.steps] == [s.accepted for s in want.steps]
    assert remote.transport_s > 0
    remote.close()


def test_the_handshake_describes_the_daemon(draft_daemon, tiny_pair):
    _, endpoint = draft_daemon
    remote = RemoteDrafter(endpoint, timeout_s=10)
    welcome = remote.hello()
    remote.close()
    assert welcome["model"] == str(tiny_pair[1])  # not in the catalog: the folder as given
    assert welcome["device_ids"] == ["cpu"] and welcome["torch_build"] == "cpu"
    assert welcome["tokenizer_fingerprint"] and welcome["torch_version"]


def test_a_peer_of_another_protocol_version_is_refused_both_ways(draft_daemon, monkeypatch):
    _, endpoint = draft_daemon
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart(codec.encode("hello", id=9, version=codec.PROTOCOL_VERSION + 1))
    assert sock.poll(10_000)
    reply = codec.decode(sock.recv_multipart())
    sock.close()
    assert reply.type == "error" and reply["code"] == "version"
    assert "peer speaks protocol version 2, this side speaks 1" in reply["text"]

    # a newer specdeck talking to this daemon refuses it with a reason
    monkeypatch.setattr(codec, "PROTOCOL_VERSION", codec.PROTOCOL_VERSION + 1)
    remote = RemoteDrafter(endpoint, timeout_s=10)
    with pytest.raises(DraftLinkError, match="refusing the draft daemon.*version") as info:
        remote.hello()
    remote.close()
    assert info.value.code == "version"


def test_a_daemon_that_does_not_answer_times_out_with_its_name():
    sup = Supervisor()
    try:
        remote = RemoteDrafter(sup.endpoint("nobody"), timeout_s=0.2)
        with pytest.raises(DraftLinkError, match="draft daemon did not answer 'propose'"):
            remote.propose(3)
        remote.close()
    finally:
        sup.stop()


def test_requests_out_of_order_are_refused_not_obeyed(draft_daemon):
    _, endpoint = draft_daemon
    remote = RemoteDrafter(endpoint, timeout_s=10)
    remote.begin([1, 2, 3], 0.0, 0)
    with pytest.raises(DraftLinkError, match="outside the vocabulary"):
        remote.begin([1, 10**9], 0.0, 0)
    remote.begin([1, 2], 0.0, 0)
    with pytest.raises(DraftLinkError, match="k must be"):
        remote.propose(0)
    with pytest.raises(DraftLinkError, match="no drafted position"):
        remote.q_row(0)
    remote.close()


def test_a_q_row_of_a_greedy_session_is_refused_and_the_session_goes_on(draft_daemon):
    _, endpoint = draft_daemon
    remote = RemoteDrafter(endpoint, timeout_s=30)
    remote.begin([1, 2, 3], 0.0, 0)
    remote.commit(0, 4)
    assert len(remote.propose(3).tokens) == 3
    with pytest.raises(DraftLinkError, match="greedy") as info:
        remote.q_row(0)
    assert info.value.code == "bad-value"
    remote.commit(1, 5)  # the session survived: it takes the commit and drafts on
    assert len(remote.propose(2).tokens) == 2
    remote.close()


def test_a_session_cannot_grow_past_the_draft_models_context(draft_daemon, tiny_pair):
    import json

    _, endpoint = draft_daemon
    context = json.loads((tiny_pair[1] / "config.json").read_text())["max_position_embeddings"]
    remote = RemoteDrafter(endpoint, timeout_s=30)
    assert remote.hello()["context_tokens"] == context
    with pytest.raises(DraftLinkError, match="context") as info:
        remote.begin([1] * (context + 1), 0.0, 0)
    assert info.value.code == "bad-value"
    remote.begin([1] * (context - 3), 0.0, 0)
    remote.commit(0, 4)
    with pytest.raises(DraftLinkError, match="context"):
        remote.propose(3)
    assert len(remote.propose(2).tokens) == 2
    remote.close()


def test_a_proposal_needs_a_commit_before_it(draft_daemon):
    _, endpoint = draft_daemon
    remote = RemoteDrafter(endpoint, timeout_s=30)
    remote.begin([1, 2, 3], 0.8, 0)
    with pytest.raises(DraftLinkError, match="commit first") as info:
        remote.propose(2)
    assert info.value.code == "state"
    remote.commit(0, 4)
    assert len(remote.propose(2).tokens) == 2
    with pytest.raises(DraftLinkError, match="commit first"):
        remote.propose(2)
    remote.close()


class FakeDraftDaemon:
    """A ROUTER that answers each request with the frames a test hands it."""

    def __init__(self, sup: Supervisor) -> None:
        self.endpoint = sup.endpoint("fake-draft")
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)

    def answer(self, make_reply) -> None:
        """Answer the next request with make_reply(request)."""
        assert self.sock.poll(10_000)
        ident, *frames = self.sock.recv_multipart()
        request = codec.decode(frames)
        self.sock.send_multipart([ident, *make_reply(request)])

    def close(self) -> None:
        self.sock.close()


def _proposal(tokens, probs):
    def reply(request):
        arrays = {"tokens": np.asarray(tokens, dtype=np.int64), "token_probs": np.asarray(probs)}
        return codec.encode("proposal", {"compute_s": 0.0}, id=request.id, arrays=arrays)

    return reply


def _ok(request):
    return codec.encode("ok", id=request.id)


@pytest.mark.parametrize(
    ("temperature", "reply", "says"),
    [
        (0.0, _ok, "'ok' to 'propose'"),
        (0.0, _proposal([1, 2, 3, 4], []), "4 tokens for k 3"),
        (0.0, _proposal([1, -2], []), "outside the vocabulary"),
        (0.0, _proposal([1, 500], []), "outside the vocabulary"),
        (0.8, _proposal([1, 2], [0.5]), "1 probabilities for 2 tokens"),
    ],
)
def test_a_reply_the_loop_cannot_use_is_a_draft_link_error(temperature, reply, says):
    import threading

    sup = Supervisor()
    fake = FakeDraftDaemon(sup)
    remote = RemoteDrafter(fake.endpoint, timeout_s=10)
    remote.vocab_size = 400
    try:
        served = threading.Thread(
            target=lambda: [fake.answer(_ok), fake.answer(_ok), fake.answer(reply)]
        )
        served.start()
        remote.begin([1, 2, 3], temperature, 0)
        remote.commit(0, 4)
        with pytest.raises(DraftLinkError, match=says):
            remote.propose(3)
        served.join()
    finally:
        remote.close()
        fake.close()
        sup.stop()
