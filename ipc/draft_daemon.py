"""The draft daemon: one drafter served on a ROUTER socket (`specdeck daemon --role draft`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from engine.drafter import Drafter
from ipc import codec
from ipc.daemon_runtime import (
    DaemonSpec,
    DaemonStartError,
    close_daemon,
    open_daemon,
    start_failed,
    torch_build,
)
from ipc.transport import PartyKeys

MAX_K = codec.MAX_DRAFT_TOKENS
MAX_CONTEXT = 1 << 20  # tokens a prepare may size a cache for


class RequestError(ValueError):
    """A well-formed request that cannot be served now; `code` is "bad-value" or "state"."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class DraftDaemon:
    """Answers draft-link requests (begin, propose, q_row, commit) with one drafter."""

    def __init__(
        self,
        drafter: Drafter,
        welcome: Mapping[str, Any],
        role: str = "draft",
        telemetry: Any = None,
    ) -> None:
        self.drafter = drafter
        self.telemetry = telemetry  # capture progress goes out as status events
        self.welcome = dict(welcome)
        self.role = role
        self.vocab_size: int | None = getattr(drafter, "vocab_size", None)
        self.context_tokens: int | None = None  # the model's context; None where unsaid
        self.shutting_down = False
        self._begun = False
        self._proposed: int | None = None  # length of the last proposal not yet committed
        self._greedy = True  # temperature 0: proposals carry no q rows
        self._committed = 0  # tokens of the session's context: the prompt and every commit
        self._may_propose = False  # a commit came after the last begin or proposal

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """Answer one request; a bad one gets an `error` reply and the daemon goes on."""
        try:
            msg = codec.decode(frames)
        except codec.ProtocolError as exc:
            return codec.error_frames(exc.code, str(exc), exc.msg_id, self.role)
        except Exception as exc:  # a codec fault must not end the daemon; the peer hears of it
            return codec.error_frames("bad-frame", f"unreadable message: {type(exc).__name__}")
        try:
            return self._serve(msg)
        except RequestError as exc:
            return codec.error_frames(exc.code, f"{msg.type}: {exc}", msg.id, self.role)
        except Exception as exc:  # the drafter failed; say so and stay up for the next begin
            self._begun = False
            text = f"{msg.type} failed: {type(exc).__name__}: {exc}".splitlines()[0]
            return codec.error_frames("internal", text, msg.id, self.role)

    def _serve(self, msg: codec.Message) -> list[bytes]:
        kind = msg.type
        if kind == "hello":
            return codec.encode("welcome", self.welcome, id=msg.id)
        if kind == "shutdown":
            self.shutting_down = True
            return codec.encode("ok", id=msg.id)
        if kind == "begin":
            return self._begin(msg)
        if kind == "prepare":
            return self._prepare(msg)
        if not self._begun:
            raise RequestError("state", "no session: send begin first")
        if kind == "propose":
            k = msg["k"]
            if not 1 <= k <= MAX_K:
                raise RequestError("bad-value", f"k must be 1..{MAX_K}, not {k}")
            if not self._may_propose:
                raise RequestError(
                    "state", "propose needs a commit first (after begin or a proposal)"
                )
            self._check_room(self._committed + k)
            t0 = time.perf_counter()
            self._may_propose = False
            proposal = self.drafter.propose(k)
            compute = time.perf_counter() - t0
            self._proposed = len(proposal.tokens)
            arrays = {
                "tokens": np.asarray(proposal.tokens, dtype=np.int64),
                "token_probs": np.asarray(proposal.token_probs, dtype=np.float64),
            }
            return codec.encode("proposal", {"compute_s": compute}, id=msg.id, arrays=arrays)
        if kind == "q_row":
            position = msg["position"]
            if self._proposed is None or not 0 <= position < self._proposed:
                raise RequestError("bad-value", f"no drafted position {position} to describe")
            if self._greedy:
                raise RequestError("bad-value", "a greedy session (temperature 0) has no q rows")
            t0 = time.perf_counter()
            row = np.asarray(self.drafter.q_row(position), dtype=np.float32)
            compute = time.perf_counter() - t0
            return codec.encode("row", {"compute_s": compute}, id=msg.id, arrays={"row": row})
        if kind == "commit":
            accepted, token = msg["accepted"], msg["next_token"]
            if not 0 <= accepted <= (self._proposed or 0):
                raise RequestError("bad-value", f"cannot accept {accepted} of {self._proposed}")
            self._check_token(token)
            self._check_room(self._committed + accepted + 1)
            t0 = time.perf_counter()
            self.drafter.commit(accepted, token)
            self._proposed = 0  # a commit with nothing drafted appends one more token
            self._committed += accepted + 1
            self._may_propose = True
            return codec.encode("ok", {"compute_s": time.perf_counter() - t0}, id=msg.id)
        raise RequestError("state", f"a draft daemon does not serve {kind!r}")

    def _begin(self, msg: codec.Message) -> list[bytes]:
        prompt = msg.arrays["prompt_ids"]
        temperature = msg["temperature"]
        if prompt.size == 0:
            raise RequestError("bad-value", "empty prompt")
        self._check_room(prompt.size)
        for token in (int(prompt.min()), int(prompt.max())):
            self._check_token(token)
        problem = codec.sampling_problem(temperature, msg["seed"])
        if problem:
            raise RequestError("bad-value", problem)
        t0 = time.perf_counter()
        self._begun = False
        self.drafter.begin([int(t) for t in prompt], float(temperature), msg["seed"])
        self._begun, self._proposed = True, 0
        self._greedy, self._committed, self._may_propose = temperature == 0, prompt.size, False
        return codec.encode("ok", {"compute_s": time.perf_counter() - t0}, id=msg.id)

    def _prepare(self, msg: codec.Message) -> list[bytes]:
        """Size the cache and capture the graphs a run needs, before its `begin`."""
        ks = [int(k) for k in msg.arrays["ks"]]
        context, temperature = msg["context_tokens"], msg["temperature"]
        if not ks or not all(1 <= k <= MAX_K for k in ks):
            raise RequestError("bad-value", f"every k must be 1..{MAX_K}")
        if not 1 <= context <= MAX_CONTEXT:
            raise RequestError("bad-value", f"context_tokens must be 1..{MAX_CONTEXT}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise RequestError("bad-value", f"temperature must be >= 0, not {temperature}")
        t0 = time.perf_counter()
        on_progress = None
        if self.telemetry is not None:
            on_progress = lambda text: self.telemetry.status("capture", text)  # noqa: E731
        capture_s = self.drafter.prepare(context, ks, float(temperature), on_progress)
        for key in ("decode_kernels", "decode_kernels_reason"):  # a capture may have failed
            self.welcome.pop(key, None)
        self.welcome.update(decode_path_facts(self.drafter))
        fields = {"compute_s": time.perf_counter() - t0, "capture_s": float(capture_s)}
        return codec.encode("ok", fields, id=msg.id)

    def _check_room(self, tokens: int) -> None:
        if self.context_tokens is not None and tokens > self.context_tokens:
            raise RequestError(
                "bad-value",
                f"{tokens} tokens would pass the draft model's context of {self.context_tokens}",
            )

    def _check_token(self, token: int) -> None:
        if token < 0 or (self.vocab_size is not None and token >= self.vocab_size):
            raise RequestError("bad-value", f"token id {token} is outside the vocabulary")

    def serve(self, sock: zmq.Socket, poll_ms: int = 200) -> None:
        """Serve requests on a bound ROUTER until a `shutdown` request."""
        while not self.shutting_down:
            if not sock.poll(poll_ms, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            if len(frames) < 1:
                continue
            sock.send_multipart([frames[0], *self.handle(frames[1:])])


def context_tokens(loaded: Any) -> int | None:
    """The tokens a loaded model was made to attend to (`max_position_embeddings`), or None."""
    config = getattr(getattr(loaded, "model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def model_facts(loaded: Any, spec: DaemonSpec) -> dict[str, Any]:
    """The `welcome` reply fields for a loaded model."""
    import torch

    info = getattr(loaded, "info", None)
    return {
        "role": spec.role,
        "model": str(getattr(info, "name", None) or spec.model),
        "tokenizer_fingerprint": getattr(info, "tokenizer_fingerprint", None),
        "device_ids": list(spec.device_ids),
        "torch_version": str(torch.__version__),
        "torch_build": torch_build(),
        "pid": os.getpid(),
        "context_tokens": context_tokens(loaded),
    }


def decode_path_facts(drafter: Any) -> dict[str, Any]:
    """The `welcome` fields naming the drafter's decode path and why not a faster one."""
    path = getattr(drafter, "path", None)
    if path is None:
        return {}
    facts = {"decode_path": path.name, "decode_path_reason": path.reason}
    if path.kernels is not None:
        facts.update(decode_kernels=path.kernels, decode_kernels_reason=path.kernels_reason)
    return facts


def load_drafter(model: str, torch_devices: tuple[str, ...], trust_remote_code: bool):
    """Load a model and wrap it in a LocalDrafter; returns (drafter, loaded model)."""
    from engine.catalog import resolve_model
    from engine.loading import load_model
    from engine.local_drafter import LocalDrafter

    info = resolve_model(model, ())
    loaded = load_model(info, list(torch_devices), trust_remote_code=trust_remote_code, draft=True)
    return LocalDrafter(loaded), loaded


def main(spec: DaemonSpec, keys: PartyKeys | None = None) -> int:
    """Run the draft daemon until shutdown; 1 with a one-line error when it cannot start."""
    try:
        telemetry, sock = open_daemon(spec, keys)
    except DaemonStartError:
        return 1
    try:
        drafter, loaded = load_drafter(spec.model, spec.torch_devices, spec.trust_remote_code)
    except Exception as exc:
        return start_failed(spec, telemetry, exc)
    welcome = {**model_facts(loaded, spec), **decode_path_facts(drafter)}
    daemon = DraftDaemon(drafter, welcome, spec.role, telemetry)
    daemon.vocab_size = getattr(loaded.model.config, "vocab_size", None)
    daemon.context_tokens = context_tokens(loaded)
    telemetry.status("ready", f"{daemon.welcome['model']} on {', '.join(spec.device_ids)}")
    daemon.serve(sock)
    drafter.close()
    close_daemon(telemetry, sock)
    return 0
