"""The wire codec: what goes in comes out, and anything malformed is refused with a reason."""

from pathlib import Path

import msgpack
import numpy as np
import pytest

from ipc import codec
from ipc.codec import ProtocolError, decode, encode


def test_round_trip_keeps_fields_and_arrays_exactly():
    probs = np.array([0.25, 1e-12, 0.999999], dtype=np.float64)
    frames = encode(
        "proposal",
        {"compute_s": 0.5},
        id=7,
        arrays={"tokens": np.array([5, 6, 7]), "token_probs": probs},
    )
    msg = decode(frames)
    assert (msg.type, msg.id, msg["compute_s"]) == ("proposal", 7, 0.5)
    assert msg.arrays["tokens"].tolist() == [5, 6, 7]
    assert msg.arrays["token_probs"].tobytes() == probs.tobytes()


def test_float32_row_round_trips_bit_for_bit():
    row = np.random.default_rng(0).random(1000, dtype=np.float32)
    msg = decode(encode("row", {"compute_s": 0.0}, arrays={"row": row}))
    assert msg.arrays["row"].dtype == np.float32
    assert np.array_equal(msg.arrays["row"], row)


def test_optional_and_nullable_fields():
    msg = decode(
        encode("begin", {"temperature": 0, "seed": None}, arrays={"prompt_ids": np.array([1, 2])})
    )
    assert msg["seed"] is None and msg["temperature"] == 0


def _header(**fields):
    return msgpack.packb({"v": codec.PROTOCOL_VERSION, "id": 1, **fields})


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"\xc1garbage"], "bad-frame"),
        ([msgpack.packb([1, 2, 3])], "bad-frame"),
        ([], "bad-frame"),
        ([msgpack.packb({"v": 99, "type": "hello", "id": 1})], "version"),
        ([_header(type="launch_missiles")], "unknown-type"),
        ([_header(type="propose")], "bad-field"),
        ([_header(type="propose", k="six")], "bad-field"),
        ([_header(type="propose", k=True)], "bad-field"),
        ([_header(type="propose", k=3, extra=1)], "bad-field"),
        ([_header(type="begin", temperature=0.0, seed=1)], "bad-array"),
        (
            [
                _header(type="begin", temperature=0.0, seed=1, arrays=[["prompt_ids", "<i8", [3]]]),
                b"\x00" * 8,
            ],
            "bad-array",
        ),
        (
            [
                _header(type="begin", temperature=0.0, seed=1, arrays=[["prompt_ids", "|O", [1]]]),
                b"\x00" * 8,
            ],
            "bad-array",
        ),
        (
            [
                _header(type="begin", temperature=0.0, seed=1, arrays=[["prompt_ids", "<f4", [2]]]),
                b"\x00" * 8,
            ],
            "bad-array",
        ),
        ([_header(type="hello", id=-1)], "bad-field"),
    ],
)
def test_malformed_messages_are_refused_with_a_code(frames, code):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == code
    assert str(info.value)


def test_version_mismatch_names_both_versions():
    with pytest.raises(ProtocolError, match=r"peer speaks protocol version 2, this side speaks 1"):
        decode(encode("hello", version=2))


def test_encode_refuses_what_the_schema_forbids():
    with pytest.raises(ProtocolError):
        encode("propose", {"k": 1.5})
    with pytest.raises(ProtocolError):
        encode("proposal", {"compute_s": 0.0}, arrays={"tokens": np.array([1])})


def test_no_pickle_anywhere_in_the_codec():
    source = Path(codec.__file__).read_text(encoding="utf-8")
    assert "pickle" not in source.replace("No pickle", "")


def _begin_header(described) -> bytes:
    return _header(type="begin", temperature=0.0, seed=1, arrays=described)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        # an array's name, dtype or whole entry of a kind no dict lookup survives
        ([_begin_header([[["prompt_ids"], "<i8", [1]]]), b"\x00" * 8], "bad-array"),
        ([_begin_header([[{"a": 1}, "<i8", [1]]]), b"\x00" * 8], "bad-array"),
        ([_begin_header([["prompt_ids", ["<i8"], [1]]]), b"\x00" * 8], "bad-array"),
        ([_begin_header([["prompt_ids", "<i8", [[1]]]]), b"\x00" * 8], "bad-array"),
        ([_begin_header({"prompt_ids": 1}), b"\x00" * 8], "bad-array"),
        # 2**64 elements: wraps to 0 in int64 and would match an empty frame
        ([_begin_header([["prompt_ids", "<i8", [2**16] * 4]]), b""], "bad-array"),
        ([_begin_header([["prompt_ids", "<i8", [2**31 - 1] * 4]]), b""], "bad-array"),
        # a role that is a list, on the supervisor's telemetry socket
        ([_header(type="status", role=["target"], state="ready", text="")], "bad-field"),
        ([_header(type=["hello"])], "unknown-type"),
        ([msgpack.packb({"v": 1, "type": "hello", "id": 1, 1: 2})], "bad-frame"),
    ],
)
def test_malformed_structure_is_a_protocol_error_not_a_crash(frames, code):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == code


def test_a_message_larger_than_the_largest_legal_one_is_refused():
    rows = codec.MAX_ARRAY_ELEMENTS + 1
    header = _header(type="row", compute_s=0.0, arrays=[["row", "<f4", [rows]]])
    with pytest.raises(ProtocolError, match="more than") as info:
        decode([header, bytes(rows * 4)])
    assert info.value.code == "bad-array"
    frames = [msgpack.packb({"v": 1})] + [bytes(codec.MAX_ARRAY_BYTES)] * 2
    with pytest.raises(ProtocolError, match="bytes") as info:
        decode(frames)
    assert info.value.code == "bad-frame"


def test_the_largest_legal_messages_fit_the_limits():
    row = np.zeros(codec.MAX_ARRAY_ELEMENTS, dtype=np.float64)
    frames = encode("row", {"compute_s": 0.0}, arrays={"row": row})
    assert max(len(f) for f in frames) <= codec.MAX_FRAME_BYTES
    assert sum(len(f) for f in frames) <= codec.MAX_MESSAGE_BYTES
    assert decode(frames).arrays["row"].size == codec.MAX_ARRAY_ELEMENTS
    prompt = np.arange(codec.MAX_ARRAY_ELEMENTS, dtype=np.int64)
    decode(encode("begin", {"temperature": 0.0, "seed": 0}, arrays={"prompt_ids": prompt}))


def test_encode_refuses_a_header_the_peer_would_refuse():
    with pytest.raises(ProtocolError, match="header of") as info:
        encode("log", {"role": "target", "level": "info", "text": "x" * codec.MAX_HEADER_BYTES})
    assert info.value.code == "bad-frame"


_STEP = {
    "index": 0,
    "drafted": 4,
    "accepted": 2,
    "committed": 3,
    "draft_s": 0.01,
    "verify_s": 0.02,
    "transport_s": 0.0,
    "k": 4,
    "new_tokens": 4,
    "decode_s": 0.1,
    "text": "abc",
}


@pytest.mark.parametrize(
    ("change", "tokens"),
    [
        ({"drafted": 10**9, "accepted": 10**9}, 3),  # would make the runner allocate 10^9 rows
        ({"accepted": 5}, 3),
        ({"committed": 6}, 6),
        ({}, 2),
        ({"draft_s": float("nan")}, 3),
        ({"decode_s": -1.0}, 3),
        ({"index": -1}, 3),
    ],
)
def test_a_step_event_no_real_step_could_send_is_refused(change, tokens):
    frames = encode("step", _STEP, arrays={"token_ids": np.arange(3)})
    header = msgpack.unpackb(frames[0])
    header.update(change)
    header["arrays"] = [["token_ids", "<i8", [tokens]]]
    with pytest.raises(ProtocolError) as info:
        decode([msgpack.packb(header), np.arange(tokens, dtype=np.int64).tobytes()])
    assert info.value.code in ("bad-value", "bad-field")


def _generation(**change):
    from engine.metrics import AcceptanceStats, StepRecord
    from engine.speculative import GenerationResult
    from ipc.target_daemon import generation_document

    stats = AcceptanceStats()
    stats.add(StepRecord(0, 4, 2, 3, 0.01, 0.02, k=4))
    result = GenerationResult([5, 6, 7, 8], [], stats, 0.1, 0.2, 0.3, [4])
    doc = generation_document(
        result,
        prompt_ids=[1, 2],
        k=4,
        temperature=0.0,
        seed=0,
        text="abcd",
        baseline=result,
        transport_s=0.0,
    )
    doc.update(change)
    return doc


def test_the_generation_document_passes_and_a_broken_one_does_not():
    assert decode(encode("done", {"result": _generation()}))["result"]["new_tokens"] == 4
    header = {"v": 1, "type": "done", "id": 0}
    for broken in (
        {k: v for k, v in _generation().items() if k != "steps"},
        _generation(output_token_ids="abc"),
        _generation(baseline={"decode_s": 1.0}),
        _generation(baseline=[1]),
        _generation(prefill_s=float("inf")),
    ):
        with pytest.raises(ProtocolError) as info:
            decode([msgpack.packb({**header, "result": broken})])
        assert info.value.code == "bad-value"


def test_a_shape_numpy_cannot_hold_is_refused_even_with_a_zero_in_it():
    # found by the fuzz test: zero elements, but numpy refuses the shape (a ValueError, not ours)
    frames = [
        b"\x86\xa1v\x01\xa4type\xa5begin\xa2id\x01\xabtemperature\xcb\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\xa4seed\xc0\xa6arrays\x92\x93\xaaprompt_ids\xa3<i4\x94\x00\xcdo4\xce\x00\x89J9"
        b"\xce\x00\x89]J\xc0",
        b"",
        b"",
    ]
    with pytest.raises(ProtocolError, match="bad shape"):
        decode(frames)
