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
