"""The drafter that runs its model in the speculative loop's own process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from engine.drafter import Drafter, Proposal
from engine.fast_decoder import LeanDecoder, lean_unsupported, open_decoder
from engine.graph_decoder import (
    GREEDY,
    SAMPLED,
    CaptureError,
    DecodePath,
    GraphDecoder,
    graph_path,
    graph_unsupported,
)
from engine.loading import LoadedModel
from engine.sampling import TokenSampler, probabilities

DEFAULT_HEADROOM = 256  # tokens past the prompt when no run said how many (graph path)


class LocalDrafter(Drafter):
    """Drafts with an in-process model, keeping its KV cache across steps.

    The cache holds the committed context except up to two pending tokens (the last draft
    of a fully accepted proposal and the target's next token), which the next `propose`
    feeds in its first forward; nothing re-encodes the context. Llama-style models decode
    on CUDA through `engine.graph_decoder.GraphDecoder` (a burst of k tokens is one graph
    replay; `graphs=True` forces that path off CUDA too, eagerly, for tests), elsewhere
    through `engine.fast_decoder.LeanDecoder` (`matmul`: "auto", "torch" or "numpy", see
    there); others (or `lean=False`) through transformers.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        lean: bool = True,
        matmul: str = "auto",
        graphs: bool | None = None,
    ) -> None:
        self.loaded = loaded
        self.graph: GraphDecoder | None = None
        model = loaded.model
        not_graph = graph_unsupported(model) if lean else "the lean paths are turned off"
        if graphs is False:
            not_graph = "CUDA graphs are turned off"
        if lean and (not_graph is None or (graphs and lean_unsupported(model) is None)):
            self.graph = GraphDecoder(model, capture=not_graph is None)
            self._path = graph_path(self.graph)
            self._decoder = None
        else:
            self._decoder = open_decoder(loaded, lean, matmul)
            name = "lean" if isinstance(self._decoder, LeanDecoder) else "transformers"
            reason = not_graph if name == "lean" else (lean_unsupported(model) or not_graph)
            self._path = DecodePath(name, reason)
        self._committed = 0  # graph path: committed tokens, for the cache's size
        self._proposed = 0
        self._pending: list[int] = []  # committed tokens not yet in the cache
        self._drafted: list[int] = []  # the last proposal
        self._base_len = 0  # committed tokens before the last proposal
        self._rows: list[torch.Tensor] = []  # q rows of the last proposal (sampling only)
        self._sampler = TokenSampler(0.0, None)

    @property
    def decode_path(self) -> str:
        """'cuda-graph', 'lean' or 'transformers': which forward drafts."""
        return self._path.name

    @property
    def path(self) -> DecodePath:
        """The decode path, why it is not the graph path, and the last capture's seconds."""
        return self._path

    @property
    def matmul(self) -> str | None:
        """'torch' or 'numpy': whose BLAS the lean path multiplies with (None off it)."""
        return getattr(self._decoder, "matmul", None)

    @property
    def cached_tokens(self) -> int:
        """Tokens the draft's KV cache holds (graph path: the committed context but two)."""
        if self.graph is not None:
            return int(self.graph.length[self.graph.head_device])
        return self._decoder.length

    def _graph_mode(self) -> str:
        return GREEDY if self._sampler.greedy else SAMPLED

    def prepare(
        self,
        context_tokens: int,
        ks: Sequence[int],
        temperature: float,
        on_progress: Callable[[str], None] | None = None,
    ) -> float:
        if self.graph is None:
            return 0.0
        mode = GREEDY if temperature <= 0 else SAMPLED
        start = time.perf_counter()
        try:
            seconds = self.graph.prepare(
                context_tokens + max(ks, default=1) + 2,
                burst_ks=list(ks) or [1],
                mode=mode,
                on_progress=on_progress,
            )
        except CaptureError as exc:  # drafting goes on through the lean path, which says why
            self.graph = None
            self._decoder = open_decoder(self.loaded, True, "auto")
            self._path = DecodePath("lean", str(exc))
            return time.perf_counter() - start
        self._path = graph_path(self.graph, seconds)
        return seconds

    def begin(self, prompt_ids: list[int], temperature: float, seed: int | None) -> None:
        if not prompt_ids:
            raise ValueError("the drafter needs a prompt of at least one token")
        self._sampler = TokenSampler(temperature, seed)
        if self.graph is not None:
            # nothing captured yet when no run prepared this drafter (a direct caller)
            headroom = DEFAULT_HEADROOM if not self.graph.capacity else 2
            self.graph.prepare(len(prompt_ids) + headroom, commit=True)
            self.graph.begin(temperature, seed)
            self.graph.start_draft(prompt_ids)
            self._committed, self._proposed = len(prompt_ids), 0
            return
        self._decoder.reset()
        with torch.inference_mode():
            self._decoder.forward(torch.tensor(prompt_ids, dtype=torch.long), last_only=True)
        self._pending, self._drafted, self._rows = [], [], []

    def propose(self, k: int) -> Proposal:
        if k <= 0:
            self._drafted, self._rows, self._proposed = [], [], 0
            return Proposal([], [])
        if self.graph is not None:
            return self._propose_graph(k)
        if not self._pending:
            raise RuntimeError("propose() before any commit(): the drafter has no next token")
        decoder = self._decoder
        self._base_len = decoder.length + len(self._pending)
        step_input = torch.tensor(self._pending, dtype=torch.long, device=decoder.device)
        tokens: list[torch.Tensor] = []
        rows: list[torch.Tensor] = []
        with torch.inference_mode():
            for i in range(k):
                row = decoder.forward(step_input, last_only=True)[-1]
                if self._sampler.greedy:
                    token = torch.argmax(row)
                else:
                    probs = probabilities(row, self._sampler.temperature)
                    token = self._sampler.sample(probs)
                    rows.append(probs)
                tokens.append(token)
                if i + 1 < k:
                    step_input = token.view(1).to(decoder.device)
        # the cache now holds the context and every draft but the last
        self._pending = []
        self._rows = rows
        stacked = torch.stack([t.to(tokens[0].device) for t in tokens])
        self._drafted = stacked.tolist()
        if self._sampler.greedy:
            return Proposal(self._drafted, [])
        q = torch.stack([r[t] for r, t in zip(rows, tokens, strict=True)]).tolist()
        return Proposal(self._drafted, q)

    def _propose_graph(self, k: int) -> Proposal:
        """One burst replay: k tokens chosen on the device, read back together."""
        graph, mode = self.graph, self._graph_mode()
        graph.prepare(self._committed + k + 2, burst_ks=[k], mode=mode)
        graph.run("burst", k, mode)
        self._proposed = k
        tokens = graph.draft_out[:k].tolist()
        if mode == GREEDY:
            return Proposal(tokens, [])
        return Proposal(tokens, graph.q_x[:k].tolist())

    def q_row(self, position: int) -> np.ndarray:
        if self.graph is not None:
            if not 0 <= position < self._proposed:
                raise IndexError(f"no drafted position {position}")
            return self.graph.q_rows[position].cpu().numpy()
        return self._rows[position].float().cpu().numpy()

    def commit(self, accepted: int, next_token: int) -> None:
        if self.graph is not None:
            if not 0 <= accepted <= self._proposed:
                raise ValueError(f"accepted {accepted} of {self._proposed} drafted tokens")
            self.graph.commit_draft(accepted, next_token)
            self._committed += accepted + 1
            self._proposed = 0
            return
        drafted = self._drafted
        if not 0 <= accepted <= len(drafted):
            raise ValueError(f"accepted {accepted} of {len(drafted)} drafted tokens")
        if accepted < len(drafted):
            self._decoder.crop(self._base_len + accepted)
            self._pending = [next_token]
        else:
            # a fully accepted proposal: its last draft was never fed
            self._pending = [*self._pending, *drafted[-1:], next_token]
        self._drafted, self._rows = [], []

    def close(self) -> None:
        if self.graph is not None:
            self.graph.reset()
        else:
            self._decoder.reset()
        self._rows = []
        self.loaded.close()
