"""Watching a run from another process: the run's watch endpoint and its readers (no torch).

Every run publishes what it already has — its run events (`ipc.events`) and the device
samples it records (`backends.base.Sample`) — on a ZeroMQ XPUB socket bound in its private
run directory (`<run_dir>/watch.sock`, beside a `watch.json` that names it). Any number of
readers subscribe; a reader that is slow or gone never slows the run: the run's threads only
put items on a bounded queue, one publisher thread sends them with NOBLOCK, and each reader's
pipe holds at most `WATCH_HWM` messages, past which that reader's messages are dropped.

A late joiner is caught up through its subscription: it subscribes to `LIVE` and to
`HELLO + nonce`; the publisher sees the second subscription and sends, to that topic only,
the run's header (a `run` message: ids, models, placement, mode, options, owner, the last
sequence number sent) followed by the events that rebuild the run's state (each role's
daemon and last status, the last prompt's progress, and the latest `REPLAY` events) and each
device's latest sample. Live events carry a sequence number, so the reader drops those its
catch-up already holds and counts those it missed. `docs/protocol.md` has the wire format.

    for run in live_runs(data_dir):           # runs going on now, on this host
        with WatchFeed(run.endpoint) as feed:
            print(feed.header.run_id)         # RunHeader
            for item in feed:                 # ev.RunEvent objects and Sample objects,
                ...                           # until the run's StatusEvent("run", done|...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import secrets
import tempfile
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from backends.base import Sample
from ipc import codec
from ipc import events as ev
from ipc.owners import OWNER_FILE, RUN_DIR_PREFIX, owner_gone, run_dir_base

WATCH_SOCKET = "watch.sock"  # in the run directory
WATCH_FILE = "watch.json"  # {"run_id", "endpoint", "record_dir", "started"}: what live_runs reads
LIVE = b"w"  # topic of everything the run publishes as it goes
HELLO = b"h"  # + a reader's nonce: the topic of that reader's catch-up
WATCH_HWM = 4096  # messages queued per reader; past it, that reader's messages are dropped
QUEUE_LIMIT = 8192  # items waiting for the publisher thread; past it, items are dropped
REPLAY = 512  # latest events a late joiner gets (besides each role's last state)
HELLO_RETRY_S = 1.0  # a reader without its catch-up after this subscribes again
QUIET_CHECK_S = 1.0  # a reader that heard nothing this long checks the run is still there
GONE_GRACE_S = 2.0  # the run dir went away this long ago and no end came: the end was missed
CLOSE_LINGER_MS = 500  # at the run's end: how long the last messages may wait for a reader

_CLOSE = object()


class WatchError(RuntimeError):
    """A run cannot be watched (its endpoint is gone, it never answered); one line."""


@dataclass(frozen=True)
class RunHeader:
    """What a watcher learns first about a run: who runs it, what, where and how."""

    run_id: str
    target_model: str
    draft_model: str
    placement: Mapping[str, Any]  # {"target": [ids], "draft": id}
    mode: str
    options: Mapping[str, Any]  # as the record has them (k, temperature, prompts, ...)
    record_dir: str
    pid: int  # the process that runs it (the CLI, a script, a dashboard)
    host: str
    started: float  # that process's start time (with host and pid: `ipc.owners` identity)

    @property
    def owner(self) -> dict:
        """The `ipc.owners.process_identity` of the process that runs the run."""
        return {"host": self.host, "pid": self.pid, "started": self.started}


@dataclass(frozen=True)
class LiveWatch:
    """A run going on now whose watch endpoint can be subscribed to."""

    run_id: str
    endpoint: str  # ipc://<run_dir>/watch.sock
    run_dir: Path
    record_dir: Path
    owner: Mapping[str, Any]  # host, pid, started
    since: float  # when the endpoint opened (epoch seconds)


def live_runs(data_dir: str | os.PathLike | None = None) -> list[LiveWatch]:
    """Runs on this host with a watch endpoint whose owner process is alive, newest first;
    with `data_dir`, only those recording under it."""
    runs_root = Path(data_dir).resolve() / "runs" if data_dir is not None else None
    found = []
    for run_dir in Path(run_dir_base() or tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = json.loads((run_dir / OWNER_FILE).read_text(encoding="utf-8"))
            watch = json.loads((run_dir / WATCH_FILE).read_text(encoding="utf-8"))
            record_dir = Path(watch["record_dir"])
            live = LiveWatch(
                str(watch["run_id"]),
                str(watch["endpoint"]),
                run_dir,
                record_dir,
                owner,
                float(watch["started"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a watchable run: another user's, one starting or ending
        if runs_root is not None and record_dir.resolve().parent != runs_root:
            continue
        if owner_gone(owner) or not (run_dir / WATCH_SOCKET).exists():
            continue
        found.append(live)
    return sorted(found, key=lambda w: w.since, reverse=True)


# -- events and samples as plain maps --------------------------------------------------------

_EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(ev.RunEvent)}
_HINTS: dict[type, dict[str, Any]] = {}


def item_fields(item: Any) -> dict:
    """A run event or a sample as a msgpack-ready map (tuples become lists)."""
    return dataclasses.asdict(item)


def event_from(kind: str, fields: Mapping[str, Any]) -> ev.RunEvent:
    """The run event a map describes; raises codec.ProtocolError on a map that is not one."""
    cls = _EVENT_TYPES.get(kind)
    if cls is None:
        raise codec.ProtocolError("bad-value", f"event: unknown kind {kind!r}")
    return _build(cls, fields, kind)


def sample_from(fields: Mapping[str, Any]) -> Sample:
    """The device sample a map describes; raises codec.ProtocolError on one that is not."""
    return _build(Sample, fields, "sample")


def _build(cls: type, fields: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from a map, every field checked against its type."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    if not isinstance(fields, Mapping) or set(fields) - set(hints):
        raise codec.ProtocolError("bad-field", f"{where}: not a {cls.__name__}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in fields:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise codec.ProtocolError("bad-field", f"{where}: missing field {f.name!r}")
            continue
        values[f.name] = _value(hints[f.name], fields[f.name], f"{where}.{f.name}")
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    """`value` as the type `hint` says, or a ProtocolError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            with contextlib.suppress(codec.ProtocolError):
                return _value(option, value, where)
        raise codec.ProtocolError("bad-field", f"{where}: {type(value).__name__} is not {hint}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise codec.ProtocolError("bad-field", f"{where}: must be a list")
        (element, *_) = typing.get_args(hint) or (Any,)
        return tuple(_value(element, v, where) for v in value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is Any:
        return value
    if hint is type(None):
        ok = value is None
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, origin or hint)
    if not ok:
        raise codec.ProtocolError("bad-field", f"{where}: {type(value).__name__} is not {hint}")
    return float(value) if hint is float else value


# -- the run's side ----------------------------------------------------------------------------


class WatchPublisher:
    """The watch endpoint of one run: `publish` from any thread; one thread sends."""

    def __init__(self, run_dir: Path, header: RunHeader) -> None:
        self.run_dir = Path(run_dir)
        self.endpoint = f"ipc://{self.run_dir / WATCH_SOCKET}"
        self.header = header
        self.dropped = 0  # items the queue had no room for (the publisher fell behind)
        self._queue: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self._ready = threading.Event()
        self._failure: str | None = None
        self._seq = 0
        self._recent: deque[tuple[int, list[bytes]]] = deque(maxlen=REPLAY)
        self._sticky: dict[tuple[str, str], tuple[int, list[bytes]]] = {}
        self._latest_samples: dict[str, list[bytes]] = {}
        self._thread = threading.Thread(
            target=self._serve, name=f"watch-{header.run_id}", daemon=True
        )

    def start(self, timeout_s: float = 5.0) -> None:
        """Bind the endpoint and write `watch.json`; raises WatchError if it cannot."""
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._failure:
            raise WatchError(self._failure or "the watch endpoint did not open")

    def publish(self, item: ev.RunEvent | Sample) -> None:
        """Hand one event or sample to the publisher thread; never blocks, drops when full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 3.0) -> None:
        """Send what is queued, then close the endpoint (the run has ended)."""
        if not self._thread.is_alive():
            return
        while True:  # the end must get in even behind a full queue
            try:
                self._queue.put(_CLOSE, timeout=timeout_s)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout_s)

    # -- on the publisher thread ------------------------------------------------------------

    def _serve(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, WATCH_HWM)
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every reader's hello, even a repeated one
            sock.setsockopt(zmq.MAXMSGSIZE, 256)  # a reader only ever sends subscriptions
            sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
            sock.bind(self.endpoint)
            self._write_watch_file()
        except (zmq.ZMQError, OSError) as exc:
            self._failure = f"cannot open the watch endpoint {self.endpoint}: {exc}"
            sock.close(0)
            ctx.term()
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    item = None
                self._answer_hellos(sock)
                if item is _CLOSE:
                    break
                if item is not None:
                    self._send(sock, item)
        finally:
            sock.close()
            ctx.term()

    def _write_watch_file(self) -> None:
        text = json.dumps(
            {
                "run_id": self.header.run_id,
                "endpoint": self.endpoint,
                "record_dir": self.header.record_dir,
                "started": time.time(),
            }
        )
        temporary = self.run_dir / f".{WATCH_FILE}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.run_dir / WATCH_FILE)  # a reader never sees half of it

    def _answer_hellos(self, sock: zmq.Socket) -> None:
        """Catch up each reader that said hello since the last look."""
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01" and frame[1:2] == HELLO and len(frame) > 2:
                self._catch_up(sock, frame[1:])

    def _catch_up(self, sock: zmq.Socket, topic: bytes) -> None:
        fields = {**dataclasses.asdict(self.header), "seq": self._seq}
        messages = [codec.encode("run", fields)]
        oldest = self._recent[0][0] if self._recent else self._seq + 1
        messages += [frames for seq, frames in sorted(self._sticky.values()) if seq < oldest]
        messages += [frames for _, frames in self._recent]
        messages += list(self._latest_samples.values())
        for frames in messages:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([topic, *frames], zmq.NOBLOCK)

    def _send(self, sock: zmq.Socket, item: Any) -> None:
        frames = self._encode(item)
        if frames is None:
            return
        if isinstance(item, Sample):
            self._latest_samples[item.device_id] = frames
        else:
            self._recent.append((self._seq, frames))
            key = _sticky_key(item)
            if key is not None:
                self._sticky[key] = (self._seq, frames)
        with contextlib.suppress(zmq.Again):  # a reader at its limit loses this message
            sock.send_multipart([LIVE, *frames], zmq.NOBLOCK)

    def _encode(self, item: Any) -> list[bytes] | None:
        """The message of one item; None for one the protocol cannot carry (counted)."""
        if isinstance(item, Sample):
            try:
                return codec.encode("sample", {"sample": item_fields(item)})
            except (codec.ProtocolError, TypeError, ValueError):
                self.dropped += 1
                return None
        fields = item_fields(item)
        for attempt in (fields, _slim(fields)):
            try:
                frames = codec.encode(
                    "event", {"seq": self._seq + 1, "kind": type(item).__name__, "event": attempt}
                )
            except (codec.ProtocolError, TypeError, ValueError):
                continue
            self._seq += 1
            return frames
        self.dropped += 1
        return None


def _sticky_key(event: Any) -> tuple[str, str] | None:
    """What a late joiner needs even once the event is older than the replay: each role's
    daemon and last status, and the latest prompt's progress."""
    match event:
        case ev.DaemonEvent(role=role):
            return ("daemon", role)
        case ev.StatusEvent(role=role):
            return ("status", role)
        case ev.PromptEvent():
            return ("prompt", "")
    return None


def _slim(fields: dict) -> dict:
    """An event too big for one message, without its bulk (token ids, per-prompt documents)."""
    result = fields.get("result")
    if not isinstance(result, dict):
        return fields
    bulky = ("output_token_ids", "prompts", "output_text")
    return {**fields, "result": {k: v for k, v in result.items() if k not in bulky}}


# -- a reader ----------------------------------------------------------------------------------


class WatchFeed:
    """One reader of a run's watch endpoint: the header, then events and samples in order.

    `next(timeout_s)` returns an `ev.RunEvent`, a `Sample`, or None when nothing came in
    time; iterating yields them until the run ends. The run's end is its
    `StatusEvent("run", done|stopped|failed)`; when that was never heard (the run's process
    was killed, or this reader fell so far behind that it was dropped), the feed makes one
    from the run's record, or a `failed` one saying the process ended. Not thread-safe: one
    thread reads.
    """

    def __init__(self, endpoint: str | LiveWatch, *, hello_timeout_s: float = 10.0) -> None:
        if isinstance(endpoint, LiveWatch):
            endpoint = endpoint.endpoint
        self.endpoint = endpoint
        path = endpoint.removeprefix("ipc://")
        if endpoint.startswith("ipc://") and not os.path.exists(path):
            raise _ended(endpoint)
        self.header: RunHeader | None = None
        self.ended = False
        self.missed = 0  # live events this reader lost (it fell behind the publisher)
        self._hello_timeout_s = hello_timeout_s
        self._seq = 0  # the last event sequence number taken in
        self._nonce = b""
        self._heard = time.monotonic()
        self._gone_since: float | None = None
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)
        self._sock.setsockopt(zmq.SUBSCRIBE, LIVE)
        self._say_hello()
        self._sock.connect(endpoint)

    def __enter__(self) -> WatchFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Leave the run (it goes on)."""
        if not self._sock.closed:
            self._sock.close(0)
            self._ctx.term()

    def hello(self) -> RunHeader:
        """Wait for the run's header (asking again each HELLO_RETRY_S); WatchError if none."""
        deadline = time.monotonic() + self._hello_timeout_s
        asked = time.monotonic()
        while self.header is None:
            now = time.monotonic()
            if now > deadline:
                raise WatchError(f"the run at {self.endpoint} did not answer")
            if now - asked > HELLO_RETRY_S:
                if not os.path.exists(self.endpoint.removeprefix("ipc://")):
                    raise _ended(self.endpoint)
                self._say_hello()
                asked = now
            if self._sock.poll(100):
                self._take(self._sock.recv_multipart())
        return self.header

    def next(self, timeout_s: float | None = None) -> ev.RunEvent | Sample | None:
        """The next event or sample, or None after `timeout_s` (None: wait for one)."""
        if self.header is None:
            self.hello()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.ended:
            wait_s = QUIET_CHECK_S if deadline is None else deadline - time.monotonic()
            if wait_s < 0:
                return None
            if self._sock.poll(int(min(wait_s, QUIET_CHECK_S) * 1000) + 1):
                item = self._take(self._sock.recv_multipart())
                if item is not None:
                    return item
            elif time.monotonic() - self._heard >= QUIET_CHECK_S:
                end = self._missed_end()
                if end is not None:
                    return end
        return None

    def __iter__(self) -> Iterator[ev.RunEvent | Sample]:
        while not self.ended:
            item = self.next()
            if item is not None:
                yield item

    # -- taking messages in ----------------------------------------------------------------

    def _say_hello(self) -> None:
        if self._nonce:
            self._sock.setsockopt(zmq.UNSUBSCRIBE, HELLO + self._nonce)
        self._nonce = secrets.token_hex(8).encode()
        self._sock.setsockopt(zmq.SUBSCRIBE, HELLO + self._nonce)

    def _take(self, frames: list[bytes]) -> ev.RunEvent | Sample | None:
        """The item a message holds, if this reader should see it (None: skipped)."""
        self._heard = time.monotonic()
        topic = frames[0]
        catching_up = topic == HELLO + self._nonce
        if not catching_up and topic != LIVE:
            return None  # an older hello's catch-up
        try:
            msg = codec.decode(frames[1:])
            if msg.type == "run":
                if catching_up and self.header is None:
                    self._seq = msg["seq"]
                    self.header = _build(
                        RunHeader, {k: v for k, v in msg.fields.items() if k != "seq"}, "run"
                    )
                return None
            if self.header is None:
                return None  # live before this reader's catch-up: the catch-up holds it
            if msg.type == "sample":
                return sample_from(msg["sample"])
            if msg.type != "event":
                return None
            if not catching_up:
                seq = msg["seq"]
                if seq <= self._seq:
                    return None  # its catch-up already held it
                self.missed += seq - self._seq - 1
                self._seq = seq
            event = event_from(msg["kind"], msg["event"])
        except codec.ProtocolError:
            return None  # a message this reader cannot read is skipped, never fatal
        if isinstance(event, ev.StatusEvent) and event.role == "run" and event.state in _OVER:
            self.ended = True
        return event

    def _missed_end(self) -> ev.StatusEvent | None:
        """The run's end when its last events never came: the owner is gone, or its run dir
        has been gone a while; None while the run goes on."""
        header = self.header
        gone = owner_gone(header.owner)
        if not gone:
            if os.path.exists(self.endpoint.removeprefix("ipc://")):
                self._gone_since = None
                return None
            self._gone_since = self._gone_since or time.monotonic()
            if time.monotonic() - self._gone_since < GONE_GRACE_S:
                return None
        self.ended = True
        status = _recorded_status(Path(header.record_dir))
        if status in _OVER:
            return ev.StatusEvent("run", status, "its last events were not heard")
        return ev.StatusEvent(
            "run", "failed", f"the run's process (pid {header.pid}) ended before the run did"
        )


_OVER = ("done", "stopped", "failed")


def _ended(endpoint: str) -> WatchError:
    """The error of a run whose endpoint has gone: it has ended."""
    return WatchError(f"no run is watchable at {endpoint}: it has ended")


def _recorded_status(record_dir: Path) -> str | None:
    """The status the run's record holds, or None when it cannot be read."""
    try:
        return json.loads((record_dir / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None
