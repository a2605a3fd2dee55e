"""The target daemon: runs the speculative loop and publishes what happens
(`specdeck daemon --role target`)."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import zmq

from engine.drafter import Drafter
from engine.metrics import StepRecord, speedup
from ipc import codec
from ipc.daemon_runtime import (
    DaemonSpec,
    DaemonStartError,
    Telemetry,
    close_daemon,
    open_daemon,
    start_failed,
)
from ipc.draft_daemon import context_tokens, load_drafter, model_facts
from ipc.remote_drafter import DraftLinkError, RemoteDrafter
from ipc.transport import PartyKeys

DECODERS = ("speculative", "hf-assisted")


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt text -> token ids, as every mode does it."""
    return list(tokenizer(prompt)["input_ids"])


class TextStream:
    """The text each batch of new tokens adds to the output, decoded with the tokens before it:
    a token decoded alone loses its leading space or splits a multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.context = 0  # ids[context:shown] is decoded again, as the context of what is new
        self.shown = 0

    def add(self, new_ids: list[int]) -> str:
        """The text that `new_ids` (after any ids added and not yet shown) add."""
        self.ids.extend(new_ids)
        context = self.ids[self.context :]
        before = self.tokenizer.decode(
            context[: self.shown - self.context], skip_special_tokens=True
        )
        after = self.tokenizer.decode(context, skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # half a character: it comes with the next tokens
        self.context, self.shown = self.shown, len(self.ids)
        return after[len(before) :]


def generation_document(
    result: Any,
    *,
    prompt_ids: list[int],
    k: int | str,
    temperature: float,
    seed: int,
    text: str,
    baseline: Any | None,
    transport_s: float,
) -> dict[str, Any]:
    """The generation figures of the `specdeck run --json` document (models and placement
    are added by whoever launched the run)."""
    stats = result.stats
    base_tps = baseline.decode_tokens_per_s if baseline is not None else None
    return {
        "k": k,
        "temperature": temperature,
        "seed": seed,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": result.new_tokens,
        **stats.totals(),
        "per_position_acceptance": stats.per_position_acceptance,
        "decode_tokens_per_s": result.decode_tokens_per_s,
        "prefill_s": result.prefill_s,
        "decode_s": result.decode_s,
        "wall_s": result.wall_s,
        "output_token_ids": list(result.output_ids),
        "output_text": text,
        "baseline": None
        if baseline is None
        else {
            "decode_tokens_per_s": base_tps,
            "decode_s": baseline.decode_s,
            "new_tokens": baseline.new_tokens,
            "output_token_ids": list(baseline.output_ids),
        },
        "speedup": speedup(result.decode_tokens_per_s, base_tps),
        "k_history": list(result.k_history),
        "stop_reason": result.stop_reason,
        "transport_s": transport_s,
    }


class TargetDaemon:
    """Serves `start`, `stop` and `shutdown` on a ROUTER and runs one generation at a time."""

    def __init__(
        self,
        target: Any,
        drafter: Drafter,
        telemetry: Telemetry,
        sock: zmq.Socket,
        welcome: dict[str, Any],
        target_decoder: Any = None,
        target_path: Any = None,
    ) -> None:
        from engine.graph_decoder import DecodePath

        self.target = target
        self.target_decoder = target_decoder  # the cuda-graph path's decoder, if on it
        self.target_path = target_path or DecodePath("transformers", "no graph decoder given")
        self.drafter = drafter
        self.telemetry = telemetry
        self.sock = sock
        self.welcome = welcome
        self.shutting_down = False
        self._stop = False
        self._running = False
        self.context_tokens: int | None = None  # the shorter of the two models' contexts

    def serve(self, poll_ms: int = 200) -> None:
        """Answer requests until `shutdown`."""
        while not self.shutting_down:
            if self.sock.poll(poll_ms, zmq.POLLIN):
                self._answer_one()

    def _answer_one(self) -> None:
        frames = self.sock.recv_multipart()
        ident, body = frames[0], frames[1:]
        try:
            msg = codec.decode(body)
        except codec.ProtocolError as exc:
            self._reply(ident, codec.error_frames(exc.code, str(exc), exc.msg_id, "target"))
            return
        except Exception as exc:  # a codec fault must not end the daemon; the peer hears of it
            text = f"unreadable message: {type(exc).__name__}"
            self._reply(ident, codec.error_frames("bad-frame", text, 0, "target"))
            return
        starting = msg.type == "start" and not self._running
        problem = self._start_problem(msg.fields) if starting else None
        if msg.type == "hello":
            self._reply(ident, codec.encode("welcome", self.welcome, id=msg.id))
        elif msg.type == "stop":
            self._stop = True
            self._reply(ident, codec.encode("ok", id=msg.id))
        elif msg.type == "shutdown":
            self._stop = self.shutting_down = True
            self._reply(ident, codec.encode("ok", id=msg.id))
        elif msg.type == "start" and problem and not self._running:
            self._reply(
                ident, codec.error_frames("bad-value", f"start: {problem}", msg.id, "target")
            )
        elif msg.type == "start" and not self._running:
            self._reply(ident, codec.encode("ok", id=msg.id))
            self._run(msg.fields)
        else:
            text = "a run is going on" if msg.type == "start" else f"cannot serve {msg.type!r}"
            self._reply(ident, codec.error_frames("state", text, msg.id, "target"))

    def _start_problem(self, options: dict[str, Any]) -> str | None:
        """Why a `start` cannot run, found before it is answered `ok` (None: it can)."""
        decoder = options.get("decoder", "speculative")
        if decoder not in DECODERS:
            return f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}"
        if decoder == "hf-assisted" and getattr(self.drafter, "loaded", None) is None:
            return "the hf-assisted peer needs the draft in this daemon (in-process mode)"
        k, max_new = options["k"], options["max_new_tokens"]
        if k != "auto" and not (isinstance(k, int) and 1 <= k <= codec.MAX_DRAFT_TOKENS):
            return f"k must be 1..{codec.MAX_DRAFT_TOKENS} or 'auto', not {k!r}"
        if not 1 <= max_new <= codec.MAX_ARRAY_ELEMENTS:
            return f"max_new_tokens must be 1..{codec.MAX_ARRAY_ELEMENTS}, not {max_new}"
        problem = codec.sampling_problem(options["temperature"], options["seed"])
        if problem:
            return problem
        try:
            prompt = len(encode_prompt(self.target.tokenizer, options["prompt"]))
        except Exception as exc:  # the tokenizer refused this text
            return f"the prompt cannot be tokenized: {type(exc).__name__}"
        if prompt == 0:
            return "the prompt is empty after tokenization"
        context = self.context_tokens
        if context is not None and prompt + max_new > context:
            return (
                f"a prompt of {prompt} tokens and {max_new} new tokens is more than "
                f"the context of {context} tokens"
            )
        return None

    def _reply(self, ident: bytes, frames: list[bytes]) -> None:
        self.sock.send_multipart([ident, *frames])

    def _should_stop(self) -> bool:
        while self.sock.poll(0, zmq.POLLIN):
            self._answer_one()
        return self._stop

    def _run(self, options: dict[str, Any]) -> None:
        from engine.speculative import SpeculativeDecoder, target_only

        if options.get("decoder") == "hf-assisted":
            self._run_peer(options)
            return
        self._running, self._stop = True, False
        tokenizer = self.target.tokenizer
        tel = self.telemetry
        try:
            prompt_ids = encode_prompt(tokenizer, options["prompt"])
            k, temperature, seed = options["k"], options["temperature"], options["seed"]
            decoder = SpeculativeDecoder(
                self.target, self.drafter, k, temperature, seed, self.target_decoder
            )
            self._say_decode_paths()
            take_transport = getattr(self.drafter, "take_transport_s", None)
            clock = {"decode_start": 0.0, "new": 0, "transport": 0.0}
            stream = TextStream(tokenizer)

            def on_first(token: int) -> None:
                clock["decode_start"], clock["new"] = time.perf_counter(), 1
                stream.ids.append(token)  # its text comes with the first step's
                tel.status("decode", "decoding")
                if take_transport:
                    take_transport()  # the prefill's round trips are not a step's

            def on_step(step: StepRecord, new_ids: list[int]) -> None:
                if take_transport:
                    step = replace(step, transport_s=take_transport())
                    clock["transport"] += step.transport_s
                clock["new"] += len(new_ids)
                fields = {
                    "index": step.index,
                    "drafted": step.drafted,
                    "accepted": step.accepted,
                    "committed": step.committed,
                    "draft_s": step.draft_s,
                    "verify_s": step.verify_s,
                    "transport_s": step.transport_s,
                    "k": step.k,
                    "new_tokens": clock["new"],
                    "decode_s": time.perf_counter() - clock["decode_start"],
                    "text": stream.add(new_ids),
                }
                tel.emit("step", fields, {"token_ids": np.asarray(new_ids, dtype=np.int64)})

            result = decoder.generate(
                prompt_ids,
                options["max_new_tokens"],
                on_step=on_step,
                should_stop=self._should_stop,
                on_first_token=on_first,
                on_capture=self._on_capture,
                on_prefill=lambda: tel.status(
                    "prefill", f"prefill of {len(prompt_ids)} prompt tokens"
                ),
            )
            if decoder.fallback is not None:  # capture failed: transformers from now on
                self._leave_graphs(decoder.fallback)
            baseline = None
            if options["baseline"] and not self._stop:
                baseline = self._baseline(prompt_ids, options, target_only)
                if baseline.fallback is not None:  # its step failed to capture
                    self._leave_graphs(baseline.fallback)
            text = tokenizer.decode(result.output_ids, skip_special_tokens=True)
            doc = generation_document(
                result,
                prompt_ids=prompt_ids,
                k=k,
                temperature=temperature,
                seed=seed,
                text=text,
                baseline=baseline,
                transport_s=clock["transport"],
            )
            doc.update(self._decode_path_figures(result, baseline))
            tel.emit("done", {"result": doc})
            tel.status("stopped" if result.stop_reason == "stopped" else "done")
        except Exception as exc:  # the run failed; say why and wait to be stopped
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            text = (
                message
                if isinstance(exc, DraftLinkError)
                else (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
            )
            print(f"specdeck target daemon: {text}", file=sys.stderr)
            tel.error("run", text)
        finally:
            self._running = False

    def _run_peer(self, options: dict[str, Any]) -> None:
        """One prompt through transformers' assisted generation on the same two models."""
        from engine.hf_peer import assisted_generation

        self._running = True
        try:
            prompt_ids = encode_prompt(self.target.tokenizer, options["prompt"])
            self.telemetry.status("decode", "hf-assisted: transformers' assisted generation")
            result = assisted_generation(
                self.target,
                self.drafter.loaded,
                prompt_ids,
                options["max_new_tokens"],
                options["k"],
                options["temperature"],
                options["seed"],
            )
            doc = generation_document(
                result,
                prompt_ids=prompt_ids,
                k=options["k"],
                temperature=options["temperature"],
                seed=options["seed"],
                text=self.target.tokenizer.decode(result.output_ids, skip_special_tokens=True),
                baseline=None,
                transport_s=0.0,
            )
            self.telemetry.emit("done", {"result": {**doc, "decoder": "hf-assisted"}})
            self.telemetry.status("done")
        except Exception as exc:  # the peer failed; say why and wait to be stopped
            text = f"hf-assisted: {type(exc).__name__}: {str(exc).strip()[:200]}"
            print(f"specdeck target daemon: {text}", file=sys.stderr)
            self.telemetry.error("run", text.splitlines()[0])
        finally:
            self._running = False

    def _baseline(self, prompt_ids: list[int], options: dict[str, Any], target_only: Any):
        """Target-only decoding of the same prompt, for the speedup."""
        tel = self.telemetry
        tokenizer = self.target.tokenizer
        clock = {"start": time.perf_counter(), "new": 0}

        def on_token(token: int) -> None:
            clock["new"] += 1
            if clock["new"] == 1:
                clock["start"] = time.perf_counter()
            decode_s = time.perf_counter() - clock["start"]
            fields = {
                "phase": "baseline",
                "text": tokenizer.decode([token]),
                "new_tokens": clock["new"],
                "decode_s": decode_s,
            }
            tel.emit("token", fields, {"token_ids": np.asarray([token], dtype=np.int64)})

        return target_only(
            self.target,
            prompt_ids,
            options["max_new_tokens"],
            options["temperature"],
            options["seed"],
            on_token=on_token,
            target_decoder=self.target_decoder,
            on_capture=self._on_capture,
            on_prefill=lambda: tel.status("decode", "baseline: target-only decoding"),
        )

    # -- decode paths ------------------------------------------------------------------

    def _on_capture(self, text: str) -> None:
        """Capturing graphs is a phase the user sees (it is not decode time)."""
        self.telemetry.status("capture", text)

    def _draft_path(self) -> dict[str, Any]:
        """The draft's decode path: the in-process drafter's own, or the draft daemon's."""
        path = getattr(self.drafter, "path", None)
        if path is not None:
            return path.as_dict()
        welcome = getattr(self.drafter, "welcome", {}) or {}
        kernels = welcome.get("decode_kernels")
        return {
            "path": welcome.get("decode_path"),
            "reason": welcome.get("decode_path_reason"),
            "capture_s": float(getattr(self.drafter, "capture_s", 0.0)),
            **(
                {"kernels": kernels, "kernels_reason": welcome.get("decode_kernels_reason")}
                if kernels is not None
                else {}
            ),
        }

    def _say_decode_paths(self) -> None:
        parts = []
        for role, path in (("target", self.target_path.as_dict()), ("draft", self._draft_path())):
            why = f" ({path['reason']})" if path["reason"] else ""
            parts.append(f"{role} {path['path'] or 'unknown'}{why}")
        self.telemetry.log("info", "decode paths: " + "; ".join(parts))

    def _leave_graphs(self, reason: str) -> None:
        from engine.graph_decoder import DecodePath

        self.target_decoder, self.target_path = None, DecodePath("transformers", reason)
        self.telemetry.log("warning", f"target leaves the cuda-graph path: {reason}")

    def _decode_path_figures(self, result: Any, baseline: Any) -> dict[str, Any]:
        """`decode_paths` (per role: path, reason, capture_s) and `capture_s` for the document."""
        draft = {**self._draft_path(), "capture_s": result.draft_capture_s}
        total = result.capture_s + (baseline.capture_s if baseline is not None else 0.0)
        target = {**self.target_path.as_dict(), "capture_s": total - result.draft_capture_s}
        return {"decode_paths": {"target": target, "draft": draft}, "capture_s": total}


def shortest_context(target: Any, drafter: Drafter) -> int | None:
    """The fewer tokens of the target's and the draft's contexts (None where neither says)."""
    loaded_draft = getattr(drafter, "loaded", None)  # an in-process drafter holds its model
    welcome = getattr(drafter, "welcome", None) or {}  # a draft daemon said it at hello
    draft = context_tokens(loaded_draft) if loaded_draft else welcome.get("context_tokens")
    return min((c for c in (context_tokens(target), draft) if c), default=None)


def _connect_draft(
    spec: DaemonSpec, target_fingerprint: str | None, keys: PartyKeys | None
) -> RemoteDrafter:
    """Reach the draft daemon and check that it speaks our protocol and tokenizer."""
    sockopts = keys.client_options("draft") if keys is not None else None
    drafter = RemoteDrafter(spec.draft_endpoint, timeout_s=60.0, sockopts=sockopts)
    welcome = drafter.hello(timeout_s=spec.draft_timeout_s)
    theirs = welcome.get("tokenizer_fingerprint")
    if target_fingerprint and theirs and theirs != target_fingerprint:
        raise RuntimeError(
            f"the draft daemon's tokenizer ({theirs}) differs from the target's "
            f"({target_fingerprint})"
        )
    return drafter


def main(spec: DaemonSpec, keys: PartyKeys | None = None) -> int:
    """Run the target daemon until shutdown; 1 with a one-line error when it cannot start."""
    try:
        telemetry, sock = open_daemon(spec, keys)
    except DaemonStartError:
        return 1
    try:
        from engine.catalog import resolve_model
        from engine.loading import load_model

        info = resolve_model(spec.model, ())
        target = load_model(
            info, list(spec.torch_devices), trust_remote_code=spec.trust_remote_code
        )
        from engine.graph_decoder import open_graph_decoder

        target_graphs = open_graph_decoder(target.model)
        if spec.draft_endpoint:
            telemetry.status("loading", "waiting for the draft daemon")
            drafter: Drafter = _connect_draft(spec, info.tokenizer_fingerprint, keys)
        else:
            drafter, _ = load_drafter(
                spec.draft_model, spec.draft_torch_devices, spec.draft_trust_remote_code
            )
    except Exception as exc:
        return start_failed(spec, telemetry, exc)
    daemon = TargetDaemon(
        target, drafter, telemetry, sock, model_facts(target, spec), *target_graphs
    )
    daemon.context_tokens = shortest_context(target, drafter)
    if isinstance(drafter, RemoteDrafter):  # draft token ids must be rows of the target
        drafter.vocab_size = target.model.get_input_embeddings().num_embeddings
    telemetry.status("ready", f"{daemon.welcome['model']} on {', '.join(spec.device_ids)}")
    daemon.serve()
    drafter.close()
    close_daemon(telemetry, sock)
    return 0
