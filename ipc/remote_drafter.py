"""A Drafter whose model lives in a draft daemon, reached over a DEALER socket."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from engine.drafter import Drafter, Proposal
from ipc import codec, transport

PREPARE_TIMEOUT_S = 600.0  # capturing a large draft's graphs takes a while


class DraftLinkError(RuntimeError):
    """The draft daemon did not answer, answered with an error, or speaks another protocol."""

    def __init__(self, text: str, code: str = "link") -> None:
        super().__init__(text)
        self.code = code


# the reply each request must get (an `error` aside)
REPLIES = {
    "hello": "welcome",
    "begin": "ok",
    "propose": "proposal",
    "q_row": "row",
    "commit": "ok",
    "shutdown": "ok",
}


class RemoteDrafter(Drafter):
    """Drafter over ZeroMQ; `transport_s` sums time on the wire (round trips minus compute)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 60.0,
        context: zmq.Context | None = None,
        name: str = "draft daemon",
        sockopts: dict | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.name = name
        self.transport_s = 0.0  # cumulative; take_transport_s() hands out the part since last
        self.compute_s = 0.0
        self.capture_s = 0.0  # what the draft daemon's last prepare spent capturing
        self.welcome: dict[str, Any] = {}
        self.vocab_size: int | None = None  # token ids a proposal may hold (the target's)
        self._greedy = True  # the session's temperature is 0: proposals carry no q(x)
        self._taken = 0.0
        self._pending: int | None = None  # id of a commit whose answer is not read yet
        self._ids = itertools.count(1)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)
        transport.apply(self._sock, sockopts or {})  # tcp: a CURVE client of the draft daemon
        transport.connect(self._sock, endpoint)

    def hello(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Handshake: the daemon's protocol, model, tokenizer fingerprint, devices and torch."""
        reply = self._request("hello", {"client": "target"}, timeout_s=timeout_s)
        self.welcome = dict(reply.fields)
        return self.welcome

    def prepare(
        self,
        context_tokens: int,
        ks: Sequence[int],
        temperature: float,
        on_progress: Callable[[str], None] | None = None,
    ) -> float:
        """The draft daemon sizes its cache and captures its graphs (it shows the progress
        itself); its welcome's decode path is refreshed, as a capture may have failed."""
        fields = {"context_tokens": int(context_tokens), "temperature": float(temperature)}
        arrays = {"ks": np.asarray(list(ks), dtype=np.int64)}
        timeout = max(self.timeout_s, PREPARE_TIMEOUT_S)
        reply = self._request("prepare", fields, arrays, timeout_s=timeout)
        self.capture_s = float(reply.fields.get("capture_s", 0.0))
        self.hello()
        return self.capture_s

    def begin(self, prompt_ids: list[int], temperature: float, seed: int | None) -> None:
        arrays = {"prompt_ids": np.asarray(prompt_ids, dtype=np.int64)}
        self._request("begin", {"temperature": float(temperature), "seed": seed}, arrays)
        self._greedy = temperature == 0
        self.transport_s = self._taken = 0.0

    def propose(self, k: int) -> Proposal:
        reply = self._request("propose", {"k": int(k)})
        tokens = reply.arrays["tokens"].tolist()
        probs = reply.arrays["token_probs"].tolist()
        problem = self._proposal_problem(int(k), tokens, probs)
        if problem:
            raise DraftLinkError(f"bad proposal from the {self.name}: {problem}", "bad-value")
        return Proposal(tokens=tokens, token_probs=probs)

    def _proposal_problem(self, k: int, tokens: list[int], probs: list[float]) -> str | None:
        """What the speculative loop could not use in a proposal (None: nothing)."""
        if len(tokens) > k:
            return f"{len(tokens)} tokens for k {k}"
        vocab = self.vocab_size
        if any(t < 0 or (vocab is not None and t >= vocab) for t in tokens):
            return f"token ids {tokens} outside the vocabulary of {vocab}"
        if len(probs) != len(tokens) and not (self._greedy and not probs):
            return f"{len(probs)} probabilities for {len(tokens)} tokens"
        return None

    def q_row(self, position: int) -> np.ndarray:
        return self._request("q_row", {"position": int(position)}).arrays["row"]

    def commit(self, accepted: int, next_token: int) -> None:
        # sent now, answered before the next request's answer: one round trip per step
        fields = {"accepted": int(accepted), "next_token": int(next_token)}
        self._pending = self._send("commit", fields)

    def take_transport_s(self) -> float:
        """Transport time since the last call (one step's worth when called once per step)."""
        part = self.transport_s - self._taken
        self._taken = self.transport_s
        return part

    def shutdown(self) -> None:
        """Ask the daemon to exit."""
        self._request("shutdown", timeout_s=5.0)

    def close(self) -> None:
        self._sock.close()

    def _send(self, type_: str, fields: dict | None = None, arrays: dict | None = None) -> int:
        msg_id = next(self._ids)
        self._sock.send_multipart(codec.encode(type_, fields, id=msg_id, arrays=arrays), copy=False)
        return msg_id

    def _request(
        self,
        type_: str,
        fields: dict | None = None,
        arrays: dict | None = None,
        *,
        timeout_s: float | None = None,
    ) -> codec.Message:
        t0 = time.perf_counter()
        msg_id = self._send(type_, fields, arrays)
        deadline = t0 + (self.timeout_s if timeout_s is None else timeout_s)
        compute = 0.0
        if self._pending is not None:
            pending, self._pending = self._pending, None
            compute += float(
                self._receive(pending, "commit", deadline).fields.get("compute_s", 0.0)
            )
        reply = self._receive(msg_id, type_, deadline)
        compute += float(reply.fields.get("compute_s", 0.0))
        self.compute_s += compute
        self.transport_s += max(0.0, time.perf_counter() - t0 - compute)
        return reply

    def _receive(self, msg_id: int, type_: str, deadline: float) -> codec.Message:
        """The answer to request `msg_id`; raises DraftLinkError on an error or a timeout."""
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise DraftLinkError(f"the {self.name} did not answer {type_!r} in time", "timeout")
            frames = self._sock.recv_multipart(copy=True)
            try:
                reply = codec.decode(frames)
            except codec.ProtocolError as exc:
                if exc.code == "version":
                    raise DraftLinkError(
                        f"refusing the {self.name}: {exc}; run the same specdeck version in "
                        "every interpreter",
                        "version",
                    ) from None
                raise DraftLinkError(f"bad reply from the {self.name}: {exc}", exc.code) from None
            if reply.id == msg_id:
                break  # an older id is a late answer to a request that timed out
        if reply.type == "error":
            code = reply["code"]
            if code == "version":
                raise DraftLinkError(f"the {self.name} refused us: {reply['text']}", code)
            raise DraftLinkError(f"the {self.name} answered {type_!r} with: {reply['text']}", code)
        if reply.type != REPLIES.get(type_, reply.type):
            raise DraftLinkError(
                f"bad reply from the {self.name}: {reply.type!r} to {type_!r}", "bad-reply"
            )
        return reply
