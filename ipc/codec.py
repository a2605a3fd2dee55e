"""The one wire codec: a msgpack header followed by raw array frames it describes.

A message is `[header, *array_frames]`. The header is a msgpack map with `v` (protocol
version), `type`, `id`, the message's fields, and `arrays`: a list of
`[name, dtype, shape]`, one per following frame. Every message is checked against the
schema of its type on the way in and on the way out. No pickle, ever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
RESERVED = ("v", "type", "id", "arrays")
MAX_FRAMES = 8
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAY_DIMS = 4
ALLOWED_DTYPES = ("<i4", "<i8", "<f2", "<f4", "<f8")


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` names the kind, the text says what."""

    def __init__(self, code: str, text: str, msg_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.msg_id = msg_id


@dataclass(frozen=True)
class Schema:
    """Fields (name -> kind, see `_KINDS`) and arrays (name -> (dtype kind, ndim)) of a type."""

    required: Mapping[str, str] = field(default_factory=dict)
    optional: Mapping[str, str] = field(default_factory=dict)
    arrays: Mapping[str, tuple[str, int]] = field(default_factory=dict)


_STEP_FIELDS = {
    "index": "int",
    "drafted": "int",
    "accepted": "int",
    "committed": "int",
    "draft_s": "float",
    "verify_s": "float",
    "transport_s": "float",
    "k": "int",
    "new_tokens": "int",
    "decode_s": "float",
    "text": "str",
}

SCHEMAS: dict[str, Schema] = {
    # requests, to either daemon's control socket (ROUTER)
    "hello": Schema(optional={"client": "str"}),
    "begin": Schema(
        required={"temperature": "float", "seed": "int?"},
        arrays={"prompt_ids": ("i", 1)},
    ),
    "propose": Schema(required={"k": "int"}),
    "q_row": Schema(required={"position": "int"}),
    "commit": Schema(required={"accepted": "int", "next_token": "int"}),
    # size the draft's cache and capture its graphs for a run (before `begin`)
    "prepare": Schema(
        required={"context_tokens": "int", "temperature": "float"},
        arrays={"ks": ("i", 1)},
    ),
    "start": Schema(
        required={
            "prompt": "str",
            "max_new_tokens": "int",
            "k": "int|str",
            "temperature": "float",
            "seed": "int",
            "baseline": "bool",
        }
    ),
    "stop": Schema(),
    "shutdown": Schema(),
    # replies
    "welcome": Schema(
        required={
            "role": "str",
            "model": "str",
            "tokenizer_fingerprint": "str?",
            "device_ids": "list[str]",
            "torch_version": "str",
            "torch_build": "str",
            "pid": "int",
        },
        optional={"decode_path": "str", "decode_path_reason": "str?"},
    ),
    "ok": Schema(optional={"compute_s": "float", "capture_s": "float"}),
    "proposal": Schema(
        required={"compute_s": "float"},
        arrays={"tokens": ("i", 1), "token_probs": ("f", 1)},
    ),
    "row": Schema(required={"compute_s": "float"}, arrays={"row": ("f", 1)}),
    "error": Schema(required={"code": "str", "text": "str"}, optional={"role": "str"}),
    # telemetry events (PUB)
    "heartbeat": Schema(required={"role": "str", "pid": "int", "time": "float"}),
    "status": Schema(required={"role": "str", "state": "str", "text": "str"}),
    "step": Schema(
        required=_STEP_FIELDS, optional={"role": "str"}, arrays={"token_ids": ("i", 1)}
    ),
    "token": Schema(
        required={"phase": "str", "text": "str", "new_tokens": "int", "decode_s": "float"},
        optional={"role": "str"},
        arrays={"token_ids": ("i", 1)},
    ),
    "log": Schema(required={"role": "str", "level": "str", "text": "str"}),
    "done": Schema(required={"result": "map"}, optional={"role": "str"}),
}


@dataclass(frozen=True, eq=False)
class Message:
    """One decoded, validated message."""

    type: str
    id: int
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS = {
    "int": _is_int,
    "int?": lambda v: v is None or _is_int(v),
    "float": lambda v: isinstance(v, float) or _is_int(v),
    "str": lambda v: isinstance(v, str),
    "str?": lambda v: v is None or isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int|str": lambda v: _is_int(v) or isinstance(v, str),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "map": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v),
}


def _check_fields(type_: str, schema: Schema, fields: Mapping[str, Any], msg_id: int) -> None:
    for name in schema.required:
        if name not in fields:
            raise ProtocolError("bad-field", f"{type_}: missing field {name!r}", msg_id)
    for name, value in fields.items():
        kind = schema.required.get(name) or schema.optional.get(name)
        if kind is None:
            raise ProtocolError("bad-field", f"{type_}: unknown field {name!r}", msg_id)
        if not _KINDS[kind](value):
            raise ProtocolError(
                "bad-field",
                f"{type_}: field {name!r} must be {kind}, not {type(value).__name__}",
                msg_id,
            )


def _check_array(type_: str, name: str, array: np.ndarray, want: tuple[str, int], msg_id: int):
    kind, ndim = want
    if array.dtype.kind != kind or array.ndim != ndim:
        raise ProtocolError(
            "bad-array",
            f"{type_}: array {name!r} must be {ndim}-D of kind {kind!r}, "
            f"not {array.ndim}-D {array.dtype.str}",
            msg_id,
        )


def encode(
    type_: str,
    fields: Mapping[str, Any] | None = None,
    *,
    id: int = 0,
    arrays: Mapping[str, np.ndarray] | None = None,
    version: int = PROTOCOL_VERSION,
) -> list[bytes]:
    """Build the frames of one message; raises ProtocolError if it breaks its own schema."""
    fields = dict(fields or {})
    schema = SCHEMAS.get(type_)
    if schema is None:
        raise ProtocolError("unknown-type", f"unknown message type {type_!r}", id)
    _check_fields(type_, schema, fields, id)
    arrays = dict(arrays or {})
    if set(arrays) != set(schema.arrays):
        raise ProtocolError("bad-array", f"{type_}: arrays must be {sorted(schema.arrays)}", id)
    described, frames = [], []
    for name, value in arrays.items():
        array = np.ascontiguousarray(value)
        if array.dtype.str not in ALLOWED_DTYPES:
            array = array.astype(array.dtype.newbyteorder("<"))
        _check_array(type_, name, array, schema.arrays[name], id)
        described.append([name, array.dtype.str, list(array.shape)])
        frames.append(array.tobytes())
    header = {"v": version, "type": type_, "id": id, **fields}
    if described:
        header["arrays"] = described
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _unpack_header(raw: bytes) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("bad-frame", f"header of {len(raw)} bytes is too large")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many kinds for garbage
        raise ProtocolError("bad-frame", f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad-frame", "header is not a msgpack map")
    return header


def decode(frames: Sequence[bytes]) -> Message:
    """Parse and validate the frames of one message; raises ProtocolError on anything wrong."""
    if not frames:
        raise ProtocolError("bad-frame", "empty message")
    if len(frames) > 1 + MAX_FRAMES:
        raise ProtocolError("bad-frame", f"{len(frames)} frames is more than {1 + MAX_FRAMES}")
    header = _unpack_header(bytes(frames[0]))
    msg_id = header.get("id", 0)
    if not _is_int(msg_id) or not 0 <= msg_id < 2**63:
        raise ProtocolError("bad-field", "header 'id' must be a non-negative integer")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "version",
            f"peer speaks protocol version {version!r}, this side speaks {PROTOCOL_VERSION}",
            msg_id,
        )
    type_ = header.get("type")
    schema = SCHEMAS.get(type_) if isinstance(type_, str) else None
    if schema is None:
        raise ProtocolError("unknown-type", f"unknown message type {type_!r}", msg_id)
    described = header.get("arrays", [])
    fields = {k: v for k, v in header.items() if k not in RESERVED}
    _check_fields(type_, schema, fields, msg_id)
    arrays = _decode_arrays(type_, schema, described, frames[1:], msg_id)
    return Message(type=type_, id=msg_id, fields=fields, arrays=arrays)


def _decode_arrays(
    type_: str, schema: Schema, described: Any, frames: Sequence[bytes], msg_id: int
) -> dict[str, np.ndarray]:
    def bad(text: str) -> ProtocolError:
        return ProtocolError("bad-array", f"{type_}: {text}", msg_id)

    if not isinstance(described, list) or len(described) != len(frames):
        raise bad(f"header describes {described!r} but {len(frames)} array frames follow")
    arrays: dict[str, np.ndarray] = {}
    for entry, frame in zip(described, frames, strict=True):
        if not (isinstance(entry, list) and len(entry) == 3):
            raise bad("each array is described as [name, dtype, shape]")
        name, dtype, shape = entry
        if name not in schema.arrays or name in arrays:
            raise bad(f"unexpected array {name!r}")
        if dtype not in ALLOWED_DTYPES:
            raise bad(f"array {name!r}: dtype {dtype!r} not allowed")
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_ARRAY_DIMS
            and all(_is_int(n) and 0 <= n < 2**31 for n in shape)
        ):
            raise bad(f"array {name!r}: bad shape {shape!r}")
        array_dtype = np.dtype(dtype)
        data = bytearray(frame)  # writable, so torch.from_numpy takes it without a warning
        if int(np.prod(shape, dtype=np.int64)) * array_dtype.itemsize != len(data):
            raise bad(f"array {name!r}: shape {shape} {dtype} does not match {len(data)} bytes")
        array = np.frombuffer(data, dtype=array_dtype).reshape(shape)
        _check_array(type_, name, array, schema.arrays[name], msg_id)
        arrays[name] = array
    missing = set(schema.arrays) - set(arrays)
    if missing:
        raise bad(f"missing array(s) {sorted(missing)}")
    return arrays


def error_frames(code: str, text: str, msg_id: int = 0, role: str = "") -> list[bytes]:
    """The `error` reply or event: a code from the protocol and one line of text."""
    fields = {"code": code, "text": text}
    if role:
        fields["role"] = role
    return encode("error", fields, id=msg_id)
