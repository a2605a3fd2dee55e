"""The CUDA-graph decode path: Llama-style models at the speed of the GPU at batch 1.

A decode step of a large model reads every weight once; anything else (Python, kernel
launches, host syncs) is overhead, and on an H200 eager transformers spends most of a step
on it. `GraphDecoder` runs the same arithmetic as `engine.fast_decoder.LeanDecoder` on the
HF module's own weights, with

- a KV cache preallocated for the run, [layers, kv_heads, capacity, head_dim] per device;
  rolling back is moving a length, and the length lives on the device;
- each fixed piece of work captured once as a CUDA graph and replayed: the target's
  one-token step, its (k+1)-token verification per k, the draft's whole k-token proposal
  (a burst: k forwards, choice of each token on the device) and the draft's commit;
- acceptance on the device: greedy matching and speculative sampling's accept/reject and
  residual draw run inside the verification graph, so only the accepted count and the
  committed tokens ever reach the host.

A target split over several GPUs gets one graph per device segment, with the hidden state
copied between them. Off CUDA (`capture=False`) the same programs run eagerly, which is how
the CPU tests check this path's logic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine import decode_kernels
from engine.fast_decoder import LayerWeights, architecture_unsupported, layer_weights
from engine.sampling import accept_greedy, accept_sampled, residual_row, sample_row

CAPACITY_STEP = 256  # caches grow in these steps, so similar runs reuse their graphs
CAPACITY_SLACK = 16
WARMUP_RUNS = 2  # eager runs before a capture: cuBLAS handles, workspaces, autotuning
BURST_TRIALS = 12  # replays of each kind of burst when choosing its products
# attention's decode kernel holds every query row of a KV head in one tile: past this many
# rows (tokens x query heads per KV head) a forward uses torch's ops (a prompt's prefill)
KERNEL_ROWS = 512
PREFILL_CHUNK = 1024  # a long prompt enters the cache in pieces this long

GREEDY, SAMPLED, DEFERRED = "greedy", "sampled", "deferred"  # how a verification chooses


class CaptureError(RuntimeError):
    """Capturing a program failed: the caller falls back to an eager path and says why."""


@dataclass(frozen=True)
class DecodePath:
    """Which forward a role decodes with, why not a faster one, and its capture seconds."""

    name: str  # "cuda-graph", "lean" or "transformers"
    reason: str | None = None  # why the role is not on the cuda-graph path (None: it is)
    capture_s: float = 0.0
    # on the cuda-graph path: which kernels its graphs hold ("triton-gemv", "triton" or
    # "torch", fastest first; GraphDecoder.kernels) and why not the fastest
    kernels: str | None = None
    kernels_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        doc = {"path": self.name, "reason": self.reason, "capture_s": self.capture_s}
        if self.kernels is not None:
            doc.update(kernels=self.kernels, kernels_reason=self.kernels_reason)
        return doc


def graph_path(decoder: GraphDecoder, capture_s: float = 0.0) -> DecodePath:
    """The cuda-graph path of `decoder`, naming its kernels (and, once a draft's bursts
    were timed both ways, when they multiply through cuBLAS rather than Triton)."""
    reasons = [decoder.kernels_reason] if decoder.kernels_reason else []
    if decoder.gemv and decoder.burst_products is False:
        ms = decoder.burst_products_ms
        timed = f": {ms['cublas']:.2f} against {ms['triton']:.2f} ms" if len(ms) == 2 else ""
        reasons.append(f"bursts multiply through cuBLAS{timed}")
    return DecodePath("cuda-graph", None, capture_s, decoder.kernels, "; ".join(reasons) or None)


def graph_unsupported(model: Any) -> str | None:
    """Why `GraphDecoder` cannot run this model on CUDA graphs, or None when it can."""
    reason = architecture_unsupported(model)
    if reason is not None:
        return reason
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cuda"}:
        return f"weights on {'/'.join(sorted(devices))}, not only on CUDA GPUs"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def open_graph_decoder(model: Any) -> tuple[GraphDecoder | None, DecodePath]:
    """A target's decoder on the graph path where the model allows it, and the path named."""
    reason = graph_unsupported(model)
    if reason is None:
        try:
            decoder = GraphDecoder(model)
            return decoder, graph_path(decoder)
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0]
    return None, DecodePath("transformers", reason)


def capacity_for(tokens: int) -> int:
    """A cache size holding `tokens`, rounded up so that nearby runs share graphs."""
    return -(-(tokens + CAPACITY_SLACK) // CAPACITY_STEP) * CAPACITY_STEP


@dataclass
class _Stage:
    """Consecutive work on one device: maybe the embedding, some layers, maybe the head."""

    device: torch.device
    layers: list[tuple[int, LayerWeights]]
    keys: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    values: torch.Tensor = field(default_factory=lambda: torch.empty(0))


@dataclass
class _Piece:
    """One stage's share of a program: a function over static buffers, maybe a graph of it."""

    device: torch.device
    run_eager: Callable[[], None]
    before: Callable[[], None] | None = None  # eager copies into this piece's inputs
    graph: Any = None


class _Program:
    """A fixed sequence of device work, captured as one CUDA graph per device (or eager)."""

    def __init__(self, pieces: list[_Piece], after: Callable[[], None] | None = None) -> None:
        self.pieces = pieces
        self.after = after  # eager state copies to the other devices (several devices only)

    def capture(self, pools: dict[torch.device, Any]) -> None:
        for piece in self.pieces:
            with torch.cuda.device(piece.device):
                side = torch.cuda.Stream(piece.device)
                side.wait_stream(torch.cuda.current_stream(piece.device))
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_RUNS):
                        if piece.before is not None:
                            piece.before()
                        piece.run_eager()
                torch.cuda.current_stream(piece.device).wait_stream(side)
                if piece.device not in pools:
                    pools[piece.device] = torch.cuda.graph_pool_handle()
                graph = torch.cuda.CUDAGraph()
                if piece.before is not None:
                    piece.before()
                with torch.cuda.graph(graph, pool=pools[piece.device]):
                    piece.run_eager()
                piece.graph = graph

    def run(self) -> None:
        for piece in self.pieces:
            if piece.before is not None:
                piece.before()
            if piece.graph is None:
                piece.run_eager()
            else:
                with torch.cuda.device(piece.device):
                    piece.graph.replay()
        if self.after is not None:
            self.after()


class DeviceClock:
    """Marks in the device's stream order: CUDA events on a GPU, the host clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: Any, end: Any) -> float:
        """Time between two marks; on a GPU both must have completed."""
        if not self.cuda:
            return end - start
        return start.elapsed_time(end) / 1e3


class GraphDecoder:
    """A Llama-style model's decode programs over a static KV cache (see the module doc).

    The state is on the device: `length` (tokens in the cache), and for a target `last`
    (the newest committed token, not yet in the cache) or for a draft `last2` (the two
    newest committed tokens, re-fed at the head of every burst). `prepare()` sizes the cache
    and captures the programs a run needs; a later run that fits reuses them.
    """

    def __init__(
        self,
        model: Any,
        *,
        capture: bool | None = None,
        split_layers: int | None = None,
        kernels: str | None = None,
    ) -> None:
        reason = architecture_unsupported(model)
        if reason is not None:
            raise ValueError(f"no graph decode path: {reason}")
        inner = model.model
        self.model = model
        self.embed = inner.embed_tokens.weight
        self.lm_head = model.lm_head.weight
        self.capture = self.embed.device.type == "cuda" if capture is None else capture
        if self.capture and graph_unsupported(model) is not None:
            raise ValueError(f"no graph decode path: {graph_unsupported(model)}")
        self.dtype = self.embed.dtype
        self.head_device = self.lm_head.device
        self.embed_device = self.embed.device
        config = model.config
        first = inner.layers[0].self_attn
        self.eps = float(config.rms_norm_eps)
        self.hidden = int(config.hidden_size)
        self.head_dim = int(first.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.groups = self.heads // self.kv_heads
        self.scaling = float(first.scaling)
        self.intermediate = int(config.intermediate_size)
        self.vocab = int(self.lm_head.shape[0])
        self.embed_rows = int(self.embed.shape[0])
        self.rotary = inner.rotary_emb
        # the final norm runs where the head is (a tied lm_head may sit on the first GPU)
        self.final_norm = inner.norm.weight.to(self.head_device)
        self.stages = self._stages(inner.layers, split_layers)
        self.devices = list(dict.fromkeys(s.device for s in self.stages))
        # programmatic dependent launch for the Triton kernels (Hopper and later)
        self.pdl = (
            self.capture
            and decode_kernels.pdl_available(self.head_device)
            and os.environ.get("SPECDECK_DECODE_PDL", "1") != "0"
        )
        self.kernels, self.kernels_reason = self._choose_kernels(
            kernels or os.environ.get("SPECDECK_DECODE_KERNELS", "auto"), first
        )
        self.pdl = self.pdl and self.kernels != "torch"
        self.gemv = self.kernels == "triton-gemv"
        # the draft's bursts: Triton products or cuBLAS, whichever replays faster here
        # (chosen at the first burst's capture); the target's step and verification
        # always use cuBLAS, so that they round alike and verification stays exact
        self.burst_products: bool | None = None if self.gemv else False
        self.burst_products_ms: dict[str, float] = {}
        self.clock = DeviceClock(self.head_device)
        self.capacity = 0
        self.k_cap = 0
        self.capture_s = 0.0  # seconds the last prepare() spent capturing
        self._programs: dict[tuple, _Program] = {}
        self._pools: dict[torch.device, Any] = {}
        self._generator: torch.Generator | None = None
        with torch.inference_mode():
            self._allocate_state()

    # -- layout --------------------------------------------------------------------------

    def _choose_kernels(self, wanted: str, attn: Any) -> tuple[str, str | None]:
        """ "triton-gemv" (fused kernels and the few-row products in Triton), "triton"
        (fused kernels, cuBLAS products) or "torch", each Triton set checked against the
        torch ops on this device first; and why not the fastest. "auto" takes the fastest
        that agrees with torch on CUDA."""
        if wanted == "torch":
            return "torch", "torch ops asked for"
        if not decode_kernels.available():
            return "torch", "Triton is not installed"
        if wanted == "auto" and not self.capture:
            return "torch", "not on CUDA"
        reasons = []
        if wanted in ("auto", "triton-gemv"):
            problem = self._gemv_unsupported() or self._kernel_problem(attn, products=True)
            if problem is None:
                return "triton-gemv", None
            reasons.append(f"no Triton products: {problem}")
        problem = self._kernel_problem(attn, products=False)
        if problem is None:
            return "triton", "; ".join(reasons)[:300] or None
        return "torch", f"Triton kernels disagree with torch here: {problem}"[:300]

    def _kernel_problem(self, attn: Any, products: bool) -> str | None:
        try:
            return decode_kernels.self_check(
                self.head_device,
                self.dtype,
                self.heads,
                self.kv_heads,
                self.head_dim,
                self.hidden,
                getattr(attn, "q_norm", None) is not None,
                intermediate=self.intermediate if products else None,
                pdl=self.pdl,
            )
        except Exception as exc:  # a kernel that does not compile here
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"{type(exc).__name__}: {text}"

    def _gemv_unsupported(self) -> str | None:
        """Why `decode_kernels.linear` cannot run this model's products, or None."""
        widths = (self.hidden, self.heads * self.head_dim, self.intermediate)
        if not all(decode_kernels.gemv_fits(1, width) for width in widths):
            return f"inputs {widths} wider than {decode_kernels.GEMV_MAX_IN}"
        weights = [self.lm_head]
        for stage in self.stages:
            for _, layer in stage.layers:
                weights += [layer.qkv[0], layer.o[0], layer.gate_up[0], layer.down[0]]
        if not all(w.is_contiguous() for w in weights):
            return "a weight is not row-major"
        return None

    def _stages(self, layers: Sequence[Any], split_layers: int | None) -> list[_Stage]:
        """Embedding, layers and head grouped into runs on one device, in forward order;
        `split_layers` also cuts after every that many layers (tests of the split path)."""
        stages = [_Stage(self.embed_device, [])]
        for index, layer in enumerate(layers):
            weights = layer_weights(layer, column_major=False)
            device = weights.qkv[0].device
            cut = split_layers is not None and index > 0 and index % split_layers == 0
            if device != stages[-1].device or cut:
                stages.append(_Stage(device, []))
            stages[-1].layers.append((index, weights))
        if stages[-1].device != self.head_device:
            stages.append(_Stage(self.head_device, []))
        if not stages[0].layers and len(stages) > 1 and stages[1].device == stages[0].device:
            stages.pop(0)  # the embedding joins the first layers' stage
        return stages

    def _allocate_state(self) -> None:
        """State tensors: the master copy on the head's device, mirrors where stages read."""

        def per_device(make: Callable[[torch.device], torch.Tensor]) -> dict:
            return {device: make(device) for device in self.devices}

        long = torch.long
        self.length = per_device(lambda d: torch.zeros((), dtype=long, device=d))
        self.last = per_device(lambda d: torch.zeros(1, dtype=long, device=d))
        self.last2 = torch.zeros(2, dtype=long, device=self.embed_device)
        self.accepted = torch.zeros((), dtype=long, device=self.head_device)
        self.inv_temperature = torch.ones((), dtype=torch.float32, device=self.head_device)
        self.commit_in = torch.zeros(2, dtype=long, device=self.head_device)  # accepted, next
        self._allocate_k(1)

    def _allocate_k(self, k_cap: int) -> None:
        """Buffers sized by the largest k: drafts in and out, q rows, the step's result."""
        long, head = torch.long, self.head_device
        self.k_cap = k_cap
        self.drafts = {d: torch.zeros(k_cap, dtype=long, device=d) for d in self.devices}
        self.result = torch.zeros(k_cap + 2, dtype=long, device=head)  # accepted, tokens
        self.q_x = torch.zeros(k_cap, dtype=torch.float32, device=head)
        self.q_rows = torch.zeros((0, self.vocab), dtype=torch.float32, device=head)
        self.probs = torch.zeros((0, self.vocab), dtype=torch.float32, device=head)
        self.draft_out = torch.zeros(k_cap, dtype=long, device=head)
        self._drop_programs()

    def _drop_programs(self) -> None:
        """Forget every program and the memory pools their graphs shared: torch refuses a
        capture into a pool whose graphs were all freed (an internal assert in 2.11)."""
        self._programs.clear()
        self._pools.clear()

    def _need_rows(self, which: str) -> torch.Tensor:
        """q rows (sampled drafting and verification) or p rows (deferred), allocated once."""
        current = getattr(self, which)
        if current.shape[0] < self.k_cap + 1:
            rows = torch.zeros(
                (self.k_cap + 1, self.vocab), dtype=torch.float32, device=self.head_device
            )
            setattr(self, which, rows)
            self._drop_programs()
        return getattr(self, which)

    def _allocate_cache(self, capacity: int) -> None:
        """(Re)allocate the cache for `capacity` tokens, keeping what it holds."""
        kv, d, old = self.kv_heads, self.head_dim, self.capacity
        for stage in self.stages:
            shape = (len(stage.layers), kv, capacity, d)
            keys = torch.zeros(shape, dtype=self.dtype, device=stage.device)
            values = torch.zeros(shape, dtype=self.dtype, device=stage.device)
            if old:
                keys[:, :, :old] = stage.keys
                values[:, :, :old] = stage.values
            stage.keys, stage.values = keys, values
        self.rope: dict[torch.device, torch.Tensor] = {}
        self.key_index: dict[torch.device, torch.Tensor] = {}
        self.mask_values: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        positions = torch.arange(capacity, device=self.embed_device).unsqueeze(0)
        # the model's own rotary module: every rope type and scaling it knows, exactly
        cos, sin = self.rotary(self.embed[:1].unsqueeze(0), positions)
        cos, sin = cos[0], sin[0]
        half = d // 2
        # roll(x, half) * signed_sin == rotate_half(x) * sin, one kernel fewer
        signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        table = torch.cat((cos, signed_sin), dim=-1).to(self.dtype)
        for device in self.devices:
            self.rope[device] = table.to(device)
            self.key_index[device] = torch.arange(capacity, device=device)
            self.mask_values[device] = (
                torch.zeros((), dtype=self.dtype, device=device),
                torch.full((), -torch.inf, dtype=self.dtype, device=device),
            )
        self.capacity = capacity
        self._drop_programs()

    # -- preparing -----------------------------------------------------------------------

    def _state_snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tensors = [
            *self.length.values(),
            *self.last.values(),
            *self.drafts.values(),
            self.last2,
            self.accepted,
            self.commit_in,
            self.result,
            self.q_x,
            self.draft_out,
            self.q_rows,
        ]
        return [(t, t.clone()) for t in tensors]

    def prepare(
        self,
        tokens: int,
        *,
        steps: bool = False,
        verify_ks: Sequence[int] = (),
        burst_ks: Sequence[int] = (),
        mode: str = GREEDY,
        commit: bool = False,
        on_progress: Callable[[str], None] | None = None,
    ) -> float:
        """Size the cache for `tokens` and capture what a run needs; seconds spent capturing.

        `steps`: the one-token step (target-only decoding); `verify_ks`: verifications of
        k drafts, choosing by `mode` (greedy, sampled with device q rows, or deferred: the
        residual drawn after the host fetched a q row); `burst_ks`: draft proposals (and
        `commit`, the draft's commit, which they imply).
        What is already captured for this size is reused.
        """
        start = time.perf_counter()
        wanted: list[tuple] = []
        if steps:
            wanted.append(("step", 1, GREEDY if mode == GREEDY else SAMPLED))
        wanted += [("verify", k, mode) for k in verify_ks]
        if burst_ks or commit:
            wanted.append(("commit", 0, GREEDY))
        wanted += [("burst", k, GREEDY if mode == GREEDY else SAMPLED) for k in burst_ks]
        with torch.inference_mode():
            k_cap = max([self.k_cap, *verify_ks, *burst_ks])
            if k_cap > self.k_cap:
                self._allocate_k(k_cap)
            if tokens > self.capacity:
                self._allocate_cache(capacity_for(max(tokens, self.capacity)))
            if mode != GREEDY and (verify_ks or burst_ks):
                self._need_rows("probs" if mode == DEFERRED else "q_rows")
            missing = [key for key in wanted if key not in self._programs]
            saved = self._state_snapshot() if missing else []
            if self.burst_products is None and any(key[0] == "burst" for key in missing):
                if on_progress is not None:
                    on_progress("timing the draft's products")
                self._choose_burst_products()
            for index, key in enumerate(missing):
                if on_progress is not None:
                    what = f"{key[0]} k={key[1]}" if key[0] in ("verify", "burst") else key[0]
                    on_progress(f"capturing {what} ({index + 1}/{len(missing)})")
                program = self._build(*key)
                if self.capture:
                    try:
                        program.capture(self._pools)
                    except Exception as exc:  # an op torch cannot capture, or no memory
                        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                        raise CaptureError(f"capturing {key[0]} failed: {text}") from exc
                self._programs[key] = program
            if missing:
                # the warm-up runs moved the state; the cache they wrote past it is unused
                for tensor, copy in saved:
                    tensor.copy_(copy)
                self.synchronize()
        self.capture_s = time.perf_counter() - start if missing else 0.0
        return self.capture_s

    def _build(self, kind: str, k: int, mode: str) -> _Program:
        if kind == "step":
            sampled = mode == SAMPLED
            return self._forward_program(
                1, self._step_tokens, lambda lg: self._choose_next(lg, sampled)
            )
        if kind == "verify":
            tail = {GREEDY: self._verify_greedy, SAMPLED: self._verify_sampled}.get(
                mode, self._verify_deferred
            )
            return self._forward_program(
                k + 1, lambda device: self._verify_tokens(device, k), lambda lg: tail(lg, k)
            )
        if kind == "burst":
            return self._burst_program(k, mode == SAMPLED)
        return self._commit_program()

    # -- the forward ---------------------------------------------------------------------

    def _forward_program(
        self,
        n: int,
        tokens: Callable[[torch.device], torch.Tensor],
        tail: Callable[[torch.Tensor], None],
        last_only: bool = False,
    ) -> _Program:
        """n tokens through every stage (one piece each); `tail` gets the logits."""
        pieces: list[_Piece] = []
        carry: dict[int, torch.Tensor] = {}  # stage index -> its output hidden state
        for index, stage in enumerate(self.stages):
            first, final = index == 0, index == len(self.stages) - 1
            inbox = (
                None
                if first
                else torch.empty((n, self.hidden), dtype=self.dtype, device=stage.device)
            )

            def run(index=index, stage=stage, first=first, final=final, inbox=inbox) -> None:
                x = F.embedding(tokens(stage.device), self.embed) if first else inbox
                x = self._stage_forward(stage, x, self.length[stage.device], 0)
                if final:
                    tail(self._head(x, last_only))
                else:
                    carry[index] = x

            def before(index=index, inbox=inbox) -> None:
                inbox.copy_(carry[index - 1])

            pieces.append(_Piece(stage.device, run, None if first else before))
        return _Program(pieces, self._mirror if len(self.devices) > 1 else None)

    def _stage_forward(
        self,
        stage: _Stage,
        x: torch.Tensor,
        start: torch.Tensor,
        offset: int,
        products: bool = False,
    ) -> torch.Tensor:
        """The stage's layers over n new tokens at positions start + offset + (0..n-1);
        `products`: the few-row products in Triton (`decode_kernels.linear`)."""
        if not stage.layers:
            return x
        n, device = x.shape[0], stage.device
        positions = start + self.key_index[device][offset : offset + n]
        # the tokens' cos/sin rows, gathered once for every layer (the rotary kernel then
        # reads them without first waiting for the positions)
        rope = self.rope[device].index_select(0, positions)
        if self._kernels_serve(n):
            for local, (_, layer) in enumerate(stage.layers):
                x = self._fused_layer(stage, local, layer, x, positions, rope, products)
            return x
        cos, sin = rope.unsqueeze(1).chunk(2, dim=-1)
        # query rows are (token, group): row r belongs to token r // groups
        rows = positions.unsqueeze(1).expand(n, self.groups).reshape(-1) if n > 1 else positions
        visible = self.key_index[device][None, :] <= rows[:, None]
        mask = torch.where(visible, *self.mask_values[device])
        for local, (_, layer) in enumerate(stage.layers):
            x = self._layer(stage, local, layer, x, positions, cos, sin, mask)
        return x

    def _kernels_serve(self, n: int) -> bool:
        """Whether the fused kernels take a forward of n tokens (else torch's ops)."""
        return self.kernels != "torch" and n * self.groups <= KERNEL_ROWS

    def _layer(self, stage, local, layer: LayerWeights, x, positions, cos, sin, mask):
        n, d, heads, kv = x.shape[0], self.head_dim, self.heads, self.kv_heads
        h = F.rms_norm(x, (self.hidden,), layer.input_norm, self.eps)
        qkv = F.linear(h, *layer.qkv)
        qk = qkv[:, : (heads + kv) * d].view(n, heads + kv, d)
        v = qkv[:, (heads + kv) * d :].view(n, kv, d)
        if layer.q_norm is not None:
            qk = torch.cat(
                (
                    F.rms_norm(qk[:, :heads], (d,), layer.q_norm, self.eps),
                    F.rms_norm(qk[:, heads:], (d,), layer.k_norm, self.eps),
                ),
                dim=1,
            )
        qk = torch.addcmul(qk * cos, torch.roll(qk, d // 2, dims=-1), sin)
        q, k = qk[:, :heads], qk[:, heads:]
        stage.keys[local].index_copy_(1, positions, k.transpose(0, 1))
        stage.values[local].index_copy_(1, positions, v.transpose(0, 1))
        # heads h*groups .. h*groups+groups-1 share KV head h: fold them into query rows
        q = q.reshape(n, kv, self.groups, d).transpose(0, 1).reshape(1, kv, n * self.groups, d)
        out = F.scaled_dot_product_attention(
            q,
            stage.keys[local].unsqueeze(0),
            stage.values[local].unsqueeze(0),
            attn_mask=mask,
            scale=self.scaling,
        )
        out = out.view(kv, n, self.groups, d).transpose(0, 1).reshape(n, heads * d)
        x = _linear_add(x, out, layer.o)
        h = F.rms_norm(x, (self.hidden,), layer.post_norm, self.eps)
        gate, up = F.linear(h, *layer.gate_up).chunk(2, dim=-1)
        return _linear_add(x, F.silu(gate) * up, layer.down)

    def _fused_layer(
        self, stage, local, layer: LayerWeights, x, positions, rope, products: bool
    ) -> torch.Tensor:
        """The same layer through engine.decode_kernels: about half the launches; with
        Triton `products` (a few rows), norms, gating and residuals join the products."""
        kernels, pdl = decode_kernels, self.pdl
        products = products and x.shape[0] <= kernels.GEMV_ROWS
        if products:
            qkv = kernels.linear(x, layer.qkv, norm=layer.input_norm, eps=self.eps, pdl=pdl)
        else:
            qkv = F.linear(kernels.rms_norm(x, layer.input_norm, self.eps, pdl), *layer.qkv)
        keys, values = stage.keys[local], stage.values[local]
        q = kernels.qk_rope_cache(
            qkv,
            positions,
            rope,
            layer.q_norm,
            layer.k_norm,
            keys,
            values,
            self.heads,
            self.kv_heads,
            self.eps,
            pdl,
        )
        out = kernels.attention(q, keys, values, positions, self.scaling, pdl)
        if products:
            x = kernels.linear(out, layer.o, residual=x, pdl=pdl)
            gate_up = kernels.linear(x, layer.gate_up, norm=layer.post_norm, eps=self.eps, pdl=pdl)
            return kernels.linear(gate_up, layer.down, silu=True, residual=x, pdl=pdl)
        x = _linear_add(x, out, layer.o)
        h = kernels.rms_norm(x, layer.post_norm, self.eps, pdl)
        return _linear_add(x, kernels.silu_mul(F.linear(h, *layer.gate_up), pdl), layer.down)

    def _head(self, x: torch.Tensor, last_only: bool, products: bool = False) -> torch.Tensor:
        if last_only:
            x = x[-1:]
        if products and x.shape[0] <= decode_kernels.GEMV_ROWS:
            return decode_kernels.linear(
                x, (self.lm_head, None), norm=self.final_norm, eps=self.eps, pdl=self.pdl
            )
        if self._kernels_serve(x.shape[0]):
            norm = decode_kernels.rms_norm(x, self.final_norm, self.eps, self.pdl)
            return F.linear(norm, self.lm_head)
        return F.linear(F.rms_norm(x, (self.hidden,), self.final_norm, self.eps), self.lm_head)

    def _mirror(self) -> None:
        """Copy the head device's state to the other devices' mirrors (eager, async)."""
        head = self.head_device
        for device in self.devices:
            if device != head:
                self.length[device].copy_(self.length[head])
                self.last[device].copy_(self.last[head])
                self.drafts[device].copy_(self.drafts[head])

    # -- choosing, on the device -----------------------------------------------------------

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() * self.inv_temperature, dim=-1)

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        return sample_row(probs, self._generator)

    def _choose(self, logits: torch.Tensor, sampled: bool) -> tuple[torch.Tensor, Any]:
        """A token from one row of logits (0-d) and, when sampling, the probability row."""
        if not sampled:
            return torch.argmax(logits, dim=-1), None
        probs = self._probs(logits)
        return self._draw(probs), probs

    def _choose_next(self, logits: torch.Tensor, sampled: bool) -> None:
        """Target-only step: the next token from the only row; the step fed `last`."""
        token, _ = self._choose(logits[0], sampled)
        self._commit_target(torch.zeros((), dtype=torch.long, device=token.device), token)
        self.result[1:2].copy_(token.view(1))

    def _commit_target(self, accepted: torch.Tensor, token: torch.Tensor) -> None:
        head = self.head_device
        self.result[0].copy_(accepted)
        self.accepted.copy_(accepted)
        self.last[head].copy_(token.view(1))
        self.length[head].add_(accepted + 1)

    def _step_tokens(self, device: torch.device) -> torch.Tensor:
        return self.last[device]

    def _verify_tokens(self, device: torch.device, k: int) -> torch.Tensor:
        drafts = self.drafts[device][:k].clamp(max=self.embed_rows - 1)
        return torch.cat((self.last[device], drafts))

    def _verify_greedy(self, logits: torch.Tensor, k: int) -> None:
        choices = torch.argmax(logits, dim=-1)
        accepted = accept_greedy(choices, self.drafts[self.head_device][:k])
        self.result[1 : k + 2].copy_(choices)
        self._commit_target(accepted, choices.index_select(0, accepted.view(1)))

    def _draft_probs(self, probs: torch.Tensor, k: int) -> torch.Tensor:
        """p(x_i) of each draft x_i under the target (0 for a token outside its vocabulary)."""
        drafts = self.drafts[self.head_device][:k]
        inside = drafts < self.vocab
        index = drafts.clamp(max=self.vocab - 1).unsqueeze(1)
        return probs[:k].gather(1, index).squeeze(1) * inside

    def _uniforms(self, k: int) -> torch.Tensor:
        return torch.rand(k, device=self.head_device, generator=self._generator)

    def _verify_sampled(self, logits: torch.Tensor, k: int) -> None:
        probs = self._probs(logits)
        accepted = accept_sampled(self._draft_probs(probs, k), self.q_x[:k], self._uniforms(k))
        p_row = probs.index_select(0, accepted.view(1))[0]
        q_row = self.q_rows.index_select(0, accepted.clamp(max=k - 1).view(1))[0]
        token = self._draw(residual_row(p_row, q_row * (accepted < k)))
        tokens = self.result[1 : k + 2]
        tokens[:k].copy_(self.drafts[self.head_device][:k])
        tokens.index_copy_(0, accepted.view(1), token.view(1))
        self._commit_target(accepted, token)

    def _verify_deferred(self, logits: torch.Tensor, k: int) -> None:
        """Accept on the device; the host then fetches q at a rejection (`finish_deferred`)."""
        probs = self._probs(logits)
        self.probs[: k + 1].copy_(probs)
        accepted = accept_sampled(self._draft_probs(probs, k), self.q_x[:k], self._uniforms(k))
        self.accepted.copy_(accepted)
        self.result[0].copy_(accepted)

    # -- the draft's programs --------------------------------------------------------------

    def _burst_program(self, k: int, sampled: bool, products: bool | None = None) -> _Program:
        """k draft tokens in one program: `last2` then each new token, chosen on the device."""
        if len(self.devices) != 1:
            raise ValueError("a draft must sit on one device to propose through graphs")
        stage = self.stages[0]
        base = self.length[stage.device]
        products = bool(self.burst_products) if products is None else products

        def run() -> None:
            tokens = self.last2.clamp(max=self.embed_rows - 1)
            for i in range(k):
                x = F.embedding(tokens, self.embed)
                x = self._stage_forward(stage, x, base, 0 if i == 0 else i + 1, products)
                logits = self._head(x, last_only=True, products=products)
                token, probs = self._choose(logits[0], sampled)
                self.draft_out[i : i + 1].copy_(token.view(1))
                if probs is not None:
                    self.q_rows[i].copy_(probs)
                    self.q_x[i : i + 1].copy_(probs.index_select(0, token.view(1)))
                tokens = token.view(1).clamp(max=self.embed_rows - 1)

        return _Program([_Piece(stage.device, run)])

    def _choose_burst_products(self) -> None:
        """Triton products or cuBLAS for the bursts, by timing a two-token burst both ways
        on this GPU: a small draft is launch-bound and gains from fewer, fused kernels; a
        large one reads its weights faster through cuBLAS. Off CUDA: as the kernels say."""
        if not (self.gemv and self.capture):
            self.burst_products = self.gemv
            return
        k = min(2, self.k_cap)
        device = self.stages[0].device
        for products in (True, False):
            program = self._burst_program(k, False, products)
            try:
                program.capture({})  # a pool of its own, freed with the program
            except Exception:  # noqa: BLE001 - cannot capture one way: the bursts use cuBLAS
                self.burst_products = False
                return
            times = []
            with torch.cuda.device(device):
                for _ in range(BURST_TRIALS):
                    start, end = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    start.record()
                    program.run()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
            name = "triton" if products else "cublas"
            self.burst_products_ms[name] = float(np.median(times[2:]))
            del program
        ms = self.burst_products_ms
        self.burst_products = ms["triton"] < ms["cublas"]

    def _commit_program(self) -> _Program:
        """After a verification: the committed tail becomes `last2`, the base moves on."""
        device = self.stages[0].device
        base = self.length[device]

        def run() -> None:
            accepted, token = self.commit_in[0], self.commit_in[1:2]
            committed = torch.cat((self.last2[1:], self.draft_out))
            self.last2.copy_(torch.cat((committed.index_select(0, accepted.view(1)), token)))
            base.add_(accepted + 1)

        return _Program([_Piece(device, run)])

    # -- running -------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, kind: str, k: int = 1, mode: str = GREEDY) -> None:
        """Replay (or run eagerly) one prepared program."""
        key = ("commit", 0, GREEDY) if kind == "commit" else (kind, k, mode)
        program = self._programs.get(key)
        if program is None:
            raise RuntimeError(f"{kind} k={k} ({mode}) was not prepared")
        program.run()

    @torch.inference_mode()
    def begin(self, temperature: float, seed: int | None) -> None:
        """Forget the cache; set the temperature and seed the device's draws."""
        self.reset()
        self._sampled_steps = temperature > 0
        self.inv_temperature.fill_(1.0 / temperature if temperature > 0 else 1.0)
        if self.capture:
            if seed is not None:
                with torch.cuda.device(self.head_device):
                    torch.cuda.manual_seed(seed)
            self._generator = None  # graphs draw from the device's default generator
        else:
            self._generator = torch.Generator(device=self.head_device)
            if seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(seed)

    _sampled_steps = False

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget every cached token (O(1): the length is all that says what is valid)."""
        for tensor in (*self.length.values(), *self.last.values(), self.last2, self.accepted):
            tensor.zero_()

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Run tokens into the cache eagerly (any count, in pieces of at most
        PREFILL_CHUNK); logits of the last one [1, V]."""
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.embed_device)
        if self.length[self.head_device].item() + len(ids) > self.capacity:
            raise ValueError(f"{len(ids)} tokens do not fit a cache of {self.capacity}")
        out: dict[str, torch.Tensor] = {}
        for piece in ids.split(PREFILL_CHUNK):
            program = self._forward_program(
                len(piece), piece.to, lambda lg: out.update(logits=lg), True
            )
            program.run()
            for device in self.devices:
                self.length[device].add_(len(piece))
        return out["logits"]

    @torch.inference_mode()
    def start_target(self, prompt_ids: Sequence[int]) -> int:
        """Prefill the prompt and choose the first new token, which becomes `last`."""
        logits = self.prefill(prompt_ids)
        token, _ = self._choose(logits[0], self._sampled_steps)
        for device in self.devices:
            self.last[device].copy_(token.view(1))
        return int(token)

    @torch.inference_mode()
    def start_draft(self, prompt_ids: Sequence[int]) -> None:
        """Prefill all but the last prompt token; the last two go in `last2` (see burst)."""
        prompt = list(prompt_ids)
        if len(prompt) > 1:
            self.prefill(prompt[:-1])
        self.length[self.embed_device].fill_(len(prompt) - 2)
        self.last2.copy_(torch.tensor([(prompt[-2:-1] or [0])[0], prompt[-1]]))

    @torch.inference_mode()
    def load_drafts(self, tokens: torch.Tensor, q_x: torch.Tensor | None = None) -> None:
        """Drafts (and their q) for the next verification, from the host or a device."""
        k = tokens.shape[0]
        for device in self.devices:
            self.drafts[device][:k].copy_(tokens, non_blocking=True)
        if q_x is not None:
            self.q_x[:k].copy_(q_x, non_blocking=True)

    @torch.inference_mode()
    def load_q_rows(self, rows: torch.Tensor) -> None:
        """The draft's full distributions of its k drafts (sampled, in-process)."""
        width = min(rows.shape[1], self.vocab)
        self.q_rows[: rows.shape[0], :width].copy_(rows[:, :width], non_blocking=True)

    @torch.inference_mode()
    def commit_draft(self, accepted: torch.Tensor | int, token: torch.Tensor | int) -> None:
        """Keep `accepted` of the last burst, then `token`: from the host or the target."""
        if isinstance(accepted, int):
            self.commit_in.copy_(torch.tensor([accepted, token]))
        else:
            self.commit_in[0].copy_(accepted, non_blocking=True)
            self.commit_in[1:2].copy_(token.view(1), non_blocking=True)
        self.run("commit")

    @torch.inference_mode()
    def finish_deferred(self, accepted: int, k: int, q_row: np.ndarray | None) -> int:
        """After a deferred verification: the next token, drawn from the residual at a
        rejection (the host fetched the draft's q row) or from p after full acceptance."""
        p_row = self.probs[accepted]
        if q_row is not None and accepted < k:
            q = torch.from_numpy(np.asarray(q_row, dtype=np.float32))
            width = min(q.shape[0], self.vocab)
            padded = torch.zeros(self.vocab, dtype=torch.float32)
            padded[:width] = q[:width]
            p_row = residual_row(p_row, padded.to(self.head_device))
        token = self._draw(p_row)
        self._commit_target(torch.tensor(accepted, device=self.head_device), token)
        if len(self.devices) > 1:
            self._mirror()
        return int(token)

    def synchronize(self) -> None:
        if self.capture:
            for device in self.devices:
                torch.cuda.synchronize(device)


def _linear_add(x: torch.Tensor, h: torch.Tensor, weights) -> torch.Tensor:
    """x + h W^T (+ b): the residual joins the product in one kernel where there is no bias."""
    weight, bias = weights
    if bias is None and x.device.type == "cuda":
        return torch.addmm(x, h, weight.t())
    return x + F.linear(h, weight, bias)
