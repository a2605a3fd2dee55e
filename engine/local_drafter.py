"""The drafter that runs its model in the speculative loop's own process."""

from __future__ import annotations

import numpy as np
import torch

from engine.drafter import Drafter, Proposal
from engine.fast_decoder import LeanDecoder, open_decoder
from engine.loading import LoadedModel
from engine.sampling import TokenSampler, probabilities


class LocalDrafter(Drafter):
    """Drafts with an in-process model, keeping its KV cache across steps.

    The cache holds the committed context except up to two pending tokens (the last draft
    of a fully accepted proposal and the target's next token), which the next `propose`
    feeds in its first forward; nothing re-encodes the context. Llama-style models decode
    through `engine.fast_decoder.LeanDecoder` (`matmul`: "auto", "torch" or "numpy", see there);
    others (or `lean=False`) through transformers.
    """

    def __init__(self, loaded: LoadedModel, lean: bool = True, matmul: str = "auto") -> None:
        self.loaded = loaded
        self._decoder = open_decoder(loaded, lean, matmul)
        self._pending: list[int] = []  # committed tokens not yet in the cache
        self._drafted: list[int] = []  # the last proposal
        self._base_len = 0  # committed tokens before the last proposal
        self._rows: list[torch.Tensor] = []  # q rows of the last proposal (sampling only)
        self._sampler = TokenSampler(0.0, None)

    @property
    def decode_path(self) -> str:
        """'lean' or 'transformers': which forward drafts."""
        return "lean" if isinstance(self._decoder, LeanDecoder) else "transformers"

    @property
    def matmul(self) -> str | None:
        """'torch' or 'numpy': whose BLAS the lean path multiplies with (None off it)."""
        return getattr(self._decoder, "matmul", None)

    @property
    def cached_tokens(self) -> int:
        """Tokens the draft's KV cache holds."""
        return self._decoder.length

    def begin(self, prompt_ids: list[int], temperature: float, seed: int | None) -> None:
        if not prompt_ids:
            raise ValueError("the drafter needs a prompt of at least one token")
        self._sampler = TokenSampler(temperature, seed)
        self._decoder.reset()
        with torch.inference_mode():
            self._decoder.forward(torch.tensor(prompt_ids, dtype=torch.long), last_only=True)
        self._pending, self._drafted, self._rows = [], [], []

    def propose(self, k: int) -> Proposal:
        if k <= 0:
            self._drafted, self._rows = [], []
            return Proposal([], [])
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

    def q_row(self, position: int) -> np.ndarray:
        return self._rows[position].float().cpu().numpy()

    def commit(self, accepted: int, next_token: int) -> None:
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
        self._decoder.reset()
        self._rows = []
        self.loaded.close()
