"""Property-based fuzzing of the wire: the codec, and live daemons on real sockets.

Whatever a peer sends, the codec answers with a Message or a ProtocolError, and a daemon with
one well-formed reply (never `internal`, which means the model itself failed) and goes on.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ipc import codec
from ipc.codec import SCHEMAS, ProtocolError
from tests.ipc.conftest import LiveDaemon, Peer

# bounded in count and time: the whole file takes well under a minute on two cores
CODEC = settings(max_examples=200, deadline=None, database=None)
LIVE = settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# the codes a daemon may answer a peer with (docs/protocol.md, Error codes)
PEER_CODES = {
    "bad-frame",
    "version",
    "unknown-type",
    "bad-field",
    "bad-array",
    "bad-value",
    "state",
}
MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    MSGPACK_INTS,
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)

KIND_VALUES = {
    "int": MSGPACK_INTS,
    "int?": st.none() | MSGPACK_INTS,
    "count": st.integers(0, 2**63 - 1),
    "float": st.floats(),
    "float?": st.none() | st.floats(),
    "seconds": st.floats(0, 1e9),
    "str": st.text(max_size=20),
    "str?": st.none() | st.text(max_size=20),
    "bool": st.booleans(),
    "int|str": MSGPACK_INTS | st.text(max_size=8),
    "list[str]": st.lists(st.text(max_size=8), max_size=4),
    "list[int]": st.lists(MSGPACK_INTS, max_size=4),
    "list[float]": st.lists(st.floats(), max_size=4),
    "map": st.dictionaries(st.text(max_size=6), anything, max_size=4),
    "map?": st.none() | st.dictionaries(st.text(max_size=6), anything, max_size=4),
}
DTYPES = {"i": ("<i4", "<i8"), "f": ("<f2", "<f4", "<f8")}
# element counts of 2**64 and more: an int64 product wraps (to 0 for the first)
HUGE_SHAPES = [
    [2**16] * 4,
    [2**22, 2**22, 2**20],
    [2**30, 2**30, 2**4],
    [2**24, 2**20, 2**20],
    [2**31 - 1] * 4,
    [2**20 + 1],
]


def mostly(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """`usual` four times in five, else `other`: most messages get deep into the decoder."""
    return st.one_of(usual, usual, usual, usual, other)


def _field_value(kind: str) -> st.SearchStrategy:
    return mostly(KIND_VALUES[kind], anything)


@st.composite
def array_entries(draw, schema: codec.Schema | None):
    """[name, dtype, shape] entries and frames, mostly consistent, sometimes not."""
    names = sorted(schema.arrays) if schema else []
    entries, frames = [], []
    for name in names:
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing array
        kind, ndim = schema.arrays[name]
        dtype = draw(st.sampled_from(DTYPES[kind]) | st.sampled_from(codec.ALLOWED_DTYPES))
        shape = draw(
            st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)
            | st.sampled_from(HUGE_SHAPES)
            | st.lists(st.integers(0, 2**31 - 1), max_size=5)
        )
        size = math.prod(shape) * np.dtype(dtype).itemsize
        fits = st.binary(min_size=size, max_size=size)
        frame = draw(fits if size <= 64 else st.sampled_from([b"", bytes(8)]))
        entries.append(
            [
                draw(mostly(st.just(name), anything)),
                draw(mostly(st.just(dtype), anything)),
                draw(mostly(st.just(shape), anything)),
            ]
            if draw(st.integers(0, 3))
            else draw(anything)
        )
        frames.append(frame)
    if draw(st.integers(0, 4)) == 0:
        entries.append(draw(anything))  # an entry of any shape at all
        frames.append(draw(st.binary(max_size=16)))
    return entries, frames


@st.composite
def messages(draw, types: list[str] | None = None, wild: bool = True) -> list[bytes]:
    """Frames of one message: a header shaped like the protocol's, with any values in it
    (`wild`) or with well-kinded fields, so that only the arrays are in question."""
    if types is None:
        type_ = draw(st.sampled_from(sorted(SCHEMAS)) | anything)
    else:
        type_ = draw(st.sampled_from(types))
    schema = SCHEMAS.get(type_) if isinstance(type_, str) else None
    header = {
        "v": draw(mostly(st.just(codec.PROTOCOL_VERSION), anything)) if wild else 1,
        "type": type_,
        "id": draw(mostly(st.integers(0, 2**63 - 1), anything)) if wild else 1,
    }
    kinds = {**schema.required, **schema.optional} if schema else {}
    for name, kind in kinds.items():
        if not wild:
            if name in schema.required:
                header[name] = draw(KIND_VALUES[kind])
            continue
        wanted = name in schema.required or draw(st.booleans())
        if wanted and draw(st.integers(0, 19)) > 0:  # now and then a required field is missing
            header[name] = draw(_field_value(kind))
    if wild and draw(st.integers(0, 9)) == 0:
        header[draw(st.text(max_size=8))] = draw(anything)  # an unknown field
    entries, frames = draw(array_entries(schema))
    if entries or draw(st.integers(0, 9)) == 0:
        header["arrays"] = entries
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _decode_or_refuse(frames: list[bytes]) -> codec.Message | None:
    try:
        msg = codec.decode(frames)
    except ProtocolError as exc:
        assert exc.code in PEER_CODES, exc.code
        assert str(exc)
        return None
    # what decode accepts, encode accepts too, and it comes out the same
    again = codec.encode(msg.type, msg.fields, id=msg.id, arrays=msg.arrays)
    assert codec.decode(again).fields.keys() == msg.fields.keys()
    return msg


@CODEC
@given(st.lists(st.binary(max_size=48), max_size=11))
def test_any_bytes_decode_to_a_message_or_a_protocol_error(frames):
    _decode_or_refuse(frames)


@CODEC
@given(st.lists(anything, min_size=1, max_size=4))
def test_any_msgpack_decodes_to_a_message_or_a_protocol_error(objects):
    _decode_or_refuse([msgpack.packb(o, use_bin_type=True) for o in objects])


@CODEC
@given(messages())
def test_protocol_shaped_messages_decode_or_are_refused(frames):
    _decode_or_refuse(frames)


ARRAY_TYPES = sorted(t for t, s in SCHEMAS.items() if s.arrays)


@settings(CODEC, max_examples=500)
@given(messages(ARRAY_TYPES, wild=False))
def test_array_descriptions_decode_or_are_refused(frames):
    _decode_or_refuse(frames)


ROUND_TRIP_TYPES = sorted(t for t, s in SCHEMAS.items() if s.rule is None)


@st.composite
def valid_messages(draw):
    """(type, fields, arrays) that follow a schema: what goes in must come out."""
    type_ = draw(st.sampled_from(ROUND_TRIP_TYPES))
    schema = SCHEMAS[type_]
    fields = {name: draw(KIND_VALUES[kind]) for name, kind in schema.required.items()}
    for name, kind in schema.optional.items():
        if draw(st.booleans()):
            fields[name] = draw(KIND_VALUES[kind])
    arrays = {}
    for name, (kind, ndim) in schema.arrays.items():
        dtype = draw(st.sampled_from(DTYPES[kind]))
        shape = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
        data = draw(
            st.binary(
                min_size=math.prod(shape) * np.dtype(dtype).itemsize,
                max_size=math.prod(shape) * np.dtype(dtype).itemsize,
            )
        )
        arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return type_, fields, arrays


@CODEC
@given(valid_messages(), st.integers(0, 2**63 - 1))
def test_what_goes_in_comes_out(message, msg_id):
    type_, fields, arrays = message
    frames = codec.encode(type_, fields, id=msg_id, arrays=arrays)
    msg = codec.decode(frames)
    assert (msg.type, msg.id) == (type_, msg_id)
    assert msgpack.packb(msg.fields) == msgpack.packb(fields)
    for name, array in arrays.items():
        assert msg.arrays[name].tobytes() == array.tobytes()
        assert msg.arrays[name].shape == array.shape


# -- live daemons ------------------------------------------------------------------------

DEMO_VOCAB = 8192
tokens = st.integers(-2, DEMO_VOCAB + 2)


def _request(type_: str, fields: dict, arrays: dict | None = None) -> list[bytes]:
    """A request as the codec would send it, or as a careless peer might (no schema check)."""
    header = {"v": codec.PROTOCOL_VERSION, "type": type_, "id": 1, **fields}
    frames = []
    if arrays:
        header["arrays"] = []
        for name, array in arrays.items():
            header["arrays"].append([name, array.dtype.str, list(array.shape)])
            frames.append(array.tobytes())
    return [msgpack.packb(header, use_bin_type=True), *frames]


temperatures = st.one_of(
    st.just(0.0), st.floats(0.1, 2.0), st.floats(), st.sampled_from([1e-40, 1e-30, 1e300])
)
seeds = st.one_of(st.integers(0, 2**64 - 1), MSGPACK_INTS, st.none())


@st.composite
def draft_requests(draw) -> list[bytes]:
    """One request to a draft daemon: mostly plausible, near every edge, now and then garbage."""
    kind = draw(st.sampled_from(["begin", "commit", "propose", "q_row", "hello", "other"]))
    if kind == "begin":
        length = draw(st.integers(0, 12) | st.sampled_from([2047, 2048, 2049]))
        prompt = np.asarray(draw(st.lists(tokens, min_size=length, max_size=length)), np.int64)
        if draw(st.booleans()):
            prompt = np.clip(prompt, 0, DEMO_VOCAB - 1)
        fields = {"temperature": draw(temperatures), "seed": draw(seeds)}
        return _request("begin", fields, {"prompt_ids": prompt})
    if kind == "commit":
        fields = {"accepted": draw(st.integers(-1, 6)), "next_token": draw(tokens)}
        return _request("commit", fields)
    if kind == "propose":
        return _request("propose", {"k": draw(st.integers(-1, 8) | MSGPACK_INTS)})
    if kind == "q_row":
        return _request("q_row", {"position": draw(st.integers(-1, 6) | MSGPACK_INTS)})
    if kind == "hello":
        return _request("hello", {})
    draft_types = ["hello", "begin", "propose", "q_row", "commit", "start", "stop", "welcome"]
    return draw(messages(draft_types) | st.lists(st.binary(max_size=32), min_size=1, max_size=4))


REPLY_TO = {
    "hello": "welcome",
    "begin": "ok",
    "commit": "ok",
    "propose": "proposal",
    "q_row": "row",
    "start": "ok",
    "stop": "ok",
}


def _check_reply(frames: list[bytes], reply: codec.Message) -> None:
    """One well-formed reply: the request's own, or an error with a code a peer may get."""
    try:
        sent = msgpack.unpackb(frames[0]).get("type")
    except Exception:
        sent = None
    if reply.type == "error":
        assert reply["code"] in PEER_CODES, reply.fields  # never `internal`
        event(f"{sent} -> error {reply['code']}")
    else:
        assert reply.type == REPLY_TO.get(sent), (sent, reply.type)
        event(f"{sent} -> {reply.type}")


def _session_still_works(peer: Peer) -> None:
    frames = codec.encode(
        "begin", {"temperature": 0.7, "seed": 1}, arrays={"prompt_ids": np.arange(1, 6)}
    )
    assert peer.ask(frames).type == "ok"
    assert peer.ask(codec.encode("commit", {"accepted": 0, "next_token": 7})).type == "ok"
    proposal = peer.ask(codec.encode("propose", {"k": 3}))
    assert proposal.type == "proposal" and len(proposal.arrays["tokens"]) == 3
    assert peer.ask(codec.encode("q_row", {"position": 2})).arrays["row"].size == DEMO_VOCAB


@LIVE
@given(st.lists(draft_requests(), min_size=1, max_size=12))
def test_a_draft_daemon_answers_every_request_and_goes_on(demo_draft_daemon, requests):
    live: LiveDaemon = demo_draft_daemon
    peer = Peer(live.endpoint)
    try:
        for frames in requests:
            _check_reply(frames, peer.ask(frames))
        _session_still_works(peer)
    finally:
        peer.close()
    assert live.alive()


START_VALUES = {
    "prompt": st.text(min_size=1, max_size=30).filter(str.strip),
    "max_new_tokens": st.integers(1, 4),
    "k": st.integers(1, 8) | st.just("auto"),
    "temperature": st.just(0.0) | st.floats(0.1, 2.0),
    "seed": st.integers(0, 2**64 - 1),
    "baseline": st.booleans(),
}
START_EDGES = {
    "prompt": st.sampled_from(["", " ", "hello " * 2100, "\x00\uffff"]) | st.text(max_size=30),
    "max_new_tokens": st.integers(-2, 0) | st.integers(2040, 2100) | MSGPACK_INTS,
    "k": st.integers(-1, 0) | st.integers(64, 66) | st.sampled_from(["fast", ""]) | MSGPACK_INTS,
    "temperature": temperatures,
    "seed": MSGPACK_INTS,
    "baseline": anything,
}


@st.composite
def start_requests(draw) -> list[bytes]:
    """A `start`: half the time one the daemon can run, else with some fields at an edge."""
    edged = draw(st.just(set()) | st.sets(st.sampled_from(sorted(START_VALUES)), min_size=1))
    fields = {
        name: draw(START_EDGES[name] if name in edged else START_VALUES[name])
        for name in START_VALUES
    }
    return _request("start", fields)


@LIVE
@given(
    st.lists(
        st.one_of(start_requests(), start_requests(), messages(["start", "stop", "hello"])),
        min_size=1,
        max_size=4,
    )
)
def test_a_target_daemon_refuses_what_it_cannot_run_and_runs_what_it_accepts(
    demo_target_daemon, requests
):
    live: LiveDaemon = demo_target_daemon
    peer = Peer(live.endpoint)
    try:
        for frames in requests:
            reply = peer.ask(frames)
            _check_reply(frames, reply)
            sent = msgpack.unpackb(frames[0])
            if reply.type == "ok" and sent["type"] == "start":
                if sent["max_new_tokens"] > 16:  # keep the fuzz fast: end a long run early
                    assert peer.ask(codec.encode("stop", id=2)).type == "ok"
                # accepted means it runs to the end: a `done`, never an error event
                ended = live.wait_for(
                    lambda i: i.message is not None and i.message.type in ("done", "error")
                ).message
                assert ended.type == "done", ended.fields
    finally:
        peer.close()
    problems = [i.problem for i in live.heard if i.message is None]
    assert not problems
    assert live.alive()
