"""The one wire codec: a msgpack header followed by raw array frames it describes.

A message is `[header, *array_frames]`. The header is a msgpack map with `v` (protocol
version), `type`, `id`, the message's fields, and `arrays`: a list of
`[name, dtype, shape]`, one per following frame. Every message is checked against the
schema of its type on the way in and on the way out. No pickle, ever.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
# the longest legal array: a prompt's ids for a context of 1M tokens, or a q row of a
# vocabulary of 1M; the arrays of one message together hold no more (a proposal's hold k each)
MAX_ARRAY_ELEMENTS = 1 << 20
MAX_ARRAY_BYTES = MAX_ARRAY_ELEMENTS * 8  # 8 bytes: the widest allowed dtype
# ZeroMQ's MAXMSGSIZE applies to each frame: every socket is given the largest legal frame
MAX_FRAME_BYTES = max(MAX_HEADER_BYTES, MAX_ARRAY_BYTES)
MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + MAX_ARRAY_BYTES
MAX_DRAFT_TOKENS = 64  # the most tokens one proposal (one step) may draft
MAX_SEED = 2**64 - 1  # torch generators take seeds up to here
MIN_TEMPERATURE = 1e-30  # 0 is greedy; below this, logits / temperature overflows float32


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` names the kind, the text says what."""

    def __init__(self, code: str, text: str, msg_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.msg_id = msg_id


@dataclass(frozen=True)
class Schema:
    """Fields (name -> kind, see `_KINDS`) and arrays (name -> (dtype kind, ndim)) of a type;
    `rule` says what is impossible about well-formed values (None when nothing is)."""

    required: Mapping[str, str] = field(default_factory=dict)
    optional: Mapping[str, str] = field(default_factory=dict)
    arrays: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    rule: Callable[[Mapping[str, Any], Mapping[str, np.ndarray]], str | None] | None = None


_STEP_FIELDS = {
    "index": "count",
    "drafted": "count",
    "accepted": "count",
    "committed": "count",
    "draft_s": "seconds",
    "verify_s": "seconds",
    "transport_s": "seconds",
    "k": "count",
    "new_tokens": "count",
    "decode_s": "seconds",
    "text": "str",
}

# the `done` event's result: the generation part of the `specdeck run --json` document
_BASELINE_FIELDS = {
    "decode_tokens_per_s": "float?",
    "decode_s": "seconds",
    "new_tokens": "count",
    "output_token_ids": "list[int]",
}
_GENERATION_FIELDS = {
    "k": "int|str",
    "temperature": "float",
    "seed": "int?",
    "prompt_tokens": "count",
    "new_tokens": "count",
    "steps": "count",
    "drafted": "count",
    "accepted": "count",
    "committed": "count",
    "mean_acceptance_length": "float?",
    "acceptance_rate": "float?",
    "per_position_acceptance": "list[float]",
    "decode_tokens_per_s": "float?",
    "prefill_s": "seconds",
    "decode_s": "seconds",
    "wall_s": "seconds",
    "output_token_ids": "list[int]",
    "output_text": "str",
    "baseline": "map?",
    "speedup": "float?",
    "k_history": "list[int]",
    "stop_reason": "str",
    "transport_s": "seconds",
}


def _step_problem(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str | None:
    """What no real step can be: more accepted than drafted, more committed than offered."""
    drafted, accepted, committed = fields["drafted"], fields["accepted"], fields["committed"]
    if not accepted <= drafted <= MAX_DRAFT_TOKENS or fields["k"] > MAX_DRAFT_TOKENS:
        return f"accepted {accepted} of {drafted} drafted (k {fields['k']}) is impossible"
    if committed > drafted + 1 or len(arrays["token_ids"]) != committed:
        return f"{committed} committed with {len(arrays['token_ids'])} token ids"
    return None


def _generation_problem(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str | None:
    """The generation document misses a figure, or one of the wrong kind."""
    result = fields["result"]
    baseline = result.get("baseline")
    for where, doc, kinds in (
        ("result", result, _GENERATION_FIELDS),
        ("baseline", baseline or {}, _BASELINE_FIELDS if baseline else {}),
    ):
        for name, kind in kinds.items():
            if name not in doc:
                return f"{where} has no {name!r}"
            if not _KINDS[kind](doc[name]):
                return f"{where} {name!r} must be {kind}, not {type(doc[name]).__name__}"
    return None


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
        },
        optional={"decoder": "str"},  # "speculative" (the default) or "hf-assisted"
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
        optional={
            "decode_path": "str",
            "decode_path_reason": "str?",
            "decode_kernels": "str",
            "decode_kernels_reason": "str?",
            "context_tokens": "int?",
        },
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
        required=_STEP_FIELDS,
        optional={"role": "str"},
        arrays={"token_ids": ("i", 1)},
        rule=_step_problem,
    ),
    "token": Schema(
        required={"phase": "str", "text": "str", "new_tokens": "count", "decode_s": "seconds"},
        optional={"role": "str"},
        arrays={"token_ids": ("i", 1)},
    ),
    "log": Schema(required={"role": "str", "level": "str", "text": "str"}),
    # over tcp: the endpoint a daemon's socket really bound (its port was ephemeral)
    "bound": Schema(required={"role": "str", "socket": "str", "endpoint": "str"}),
    "done": Schema(required={"result": "map"}, optional={"role": "str"}, rule=_generation_problem),
    # a run's watch endpoint (XPUB, ipc.watch): its header, its events and device samples
    "run": Schema(
        required={
            "run_id": "str",
            "target_model": "str",
            "draft_model": "str",
            "placement": "map",
            "mode": "str",
            "options": "map",
            "record_dir": "str",
            "pid": "int",
            "host": "str",
            "started": "float",
            "seq": "count",
        }
    ),
    "event": Schema(required={"seq": "count", "kind": "str", "event": "map"}),
    "sample": Schema(required={"sample": "map"}),
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


def _is_float(value: Any) -> bool:
    return isinstance(value, float) or _is_int(value)


def _is_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(x, str) for x in value)


_KINDS = {
    "int": _is_int,
    "int?": lambda v: v is None or _is_int(v),
    "count": lambda v: _is_int(v) and 0 <= v < 2**63,
    "float": _is_float,
    "float?": lambda v: v is None or _is_float(v),
    "seconds": lambda v: _is_float(v) and 0 <= v < math.inf,
    "str": lambda v: isinstance(v, str),
    "str?": lambda v: v is None or isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int|str": lambda v: _is_int(v) or isinstance(v, str),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[int]": lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    "list[float]": lambda v: isinstance(v, list) and all(_is_float(x) for x in v),
    "map": _is_map,
    "map?": lambda v: v is None or _is_map(v),
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
    for name, value in list(arrays.items()):
        array = np.ascontiguousarray(value)
        if array.dtype.str not in ALLOWED_DTYPES:
            array = array.astype(array.dtype.newbyteorder("<"))
        _check_array(type_, name, array, schema.arrays[name], id)
        if array.dtype.str not in ALLOWED_DTYPES:
            raise ProtocolError("bad-array", f"{type_}: dtype {array.dtype.str} not allowed", id)
        described.append([name, array.dtype.str, list(array.shape)])
        frames.append(array.tobytes())
        arrays[name] = array
    if sum(math.prod(shape) for _, _, shape in described) > MAX_ARRAY_ELEMENTS:
        raise ProtocolError("bad-array", f"{type_}: more than {MAX_ARRAY_ELEMENTS} elements", id)
    _check_rule(type_, schema, fields, arrays, id)
    header = {"v": version, "type": type_, "id": id, **fields}
    if described:
        header["arrays"] = described
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_HEADER_BYTES:
        raise ProtocolError(
            "bad-frame",
            f"{type_}: header of {len(packed)} bytes is more than {MAX_HEADER_BYTES}",
            id,
        )
    return [packed, *frames]


def _check_rule(
    type_: str, schema: Schema, fields: Mapping[str, Any], arrays: Mapping[str, Any], msg_id: int
) -> None:
    problem = schema.rule(fields, arrays) if schema.rule else None
    if problem:
        raise ProtocolError("bad-value", f"{type_}: {problem}", msg_id)


def _unpack_header(raw: bytes) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(
            "bad-frame", f"header of {len(raw)} bytes is more than {MAX_HEADER_BYTES}"
        )
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
    size = sum(len(f) for f in frames)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            "bad-frame", f"message of {size} bytes is more than {MAX_MESSAGE_BYTES}"
        )
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
    _check_rule(type_, schema, fields, arrays, msg_id)
    return Message(type=type_, id=msg_id, fields=fields, arrays=arrays)


def _decode_arrays(
    type_: str, schema: Schema, described: Any, frames: Sequence[bytes], msg_id: int
) -> dict[str, np.ndarray]:
    def bad(text: str) -> ProtocolError:
        return ProtocolError("bad-array", f"{type_}: {text}", msg_id)

    if not isinstance(described, list) or len(described) != len(frames):
        raise bad(f"header describes {described!r} but {len(frames)} array frames follow")
    arrays: dict[str, np.ndarray] = {}
    elements = 0
    for entry, frame in zip(described, frames, strict=True):
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
        ):
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
        elements += math.prod(shape)  # exact: an int64 product of a huge shape wraps to 0
        if elements > MAX_ARRAY_ELEMENTS:
            raise bad(f"array {name!r}: {shape} is more than {MAX_ARRAY_ELEMENTS} elements")
        if math.prod(n for n in shape if n) > MAX_ARRAY_ELEMENTS:  # numpy refuses such a
            raise bad(f"array {name!r}: bad shape {shape!r}")  # shape even with a 0 in it
        array_dtype = np.dtype(dtype)
        if math.prod(shape) * array_dtype.itemsize != len(frame):
            raise bad(f"array {name!r}: shape {shape} {dtype} does not match {len(frame)} bytes")
        data = bytearray(frame)  # writable, so torch.from_numpy takes it without a warning
        array = np.frombuffer(data, dtype=array_dtype).reshape(shape)
        _check_array(type_, name, array, schema.arrays[name], msg_id)
        arrays[name] = array
    missing = set(schema.arrays) - set(arrays)
    if missing:
        raise bad(f"missing array(s) {sorted(missing)}")
    return arrays


def sampling_problem(temperature: float, seed: int | None) -> str | None:
    """Why a request's temperature or seed cannot drive sampling, or None."""
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        return f"temperature must be 0 (greedy) or from {MIN_TEMPERATURE:g}, not {temperature}"
    if seed is not None and not 0 <= seed <= MAX_SEED:
        return f"seed must be 0..{MAX_SEED}, not {seed}"
    return None


def error_frames(code: str, text: str, msg_id: int = 0, role: str = "") -> list[bytes]:
    """The `error` reply or event: a code from the protocol and one line of text."""
    fields = {"code": code, "text": text}
    if role:
        fields["role"] = role
    return encode("error", fields, id=msg_id)
