"""Decoding sessions: a lean path for Llama-style causal LMs, transformers' forward otherwise.

transformers' forward costs milliseconds per call on a CPU in masks, cache objects and
generic code, whatever the model's size. `LeanDecoder` runs the same arithmetic (RMSNorm,
rotary, grouped-query attention, SiLU-gated MLP, lm_head) directly on the HF module's
weight tensors, with keys and values in preallocated tensors of shape
[layers, kv_heads, capacity, head_dim]: rolling back is moving a length pointer.
`lean_unsupported(model)` names what it cannot run exactly; `open_decoder` then returns an
`HFDecoder` (transformers' own forward and cache) with the same four methods.

On a CPU, in float32, the lean path keeps its weights column-major (faster one-row
products) and multiplies through whichever of torch's BLAS (MKL in the x86 wheels) and
numpy's (the OpenBLAS its wheels bundle) decodes faster on this machine, timed once per
decoder: numpy on the AMD EPYC development VM, torch on the Intel Xeon of the lent GPU host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.kvcache import cache_length, crop_cache
from engine.loading import LoadedModel

# transformers classes whose forward is the arithmetic below (and nothing else)
LEAN_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen2ForCausalLM": "qwen2",  # q/k/v biases, no query/key norm
}
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # inv_freq fixed at load
INITIAL_CAPACITY = 512
MATMULS = ("auto", "torch", "numpy")
PROBE_ROUNDS = 5
PROBE_STEPS = 3  # decode steps per round: the first after a cache flush, as in the loop
PROBE_BUDGET_S = 0.5  # stop probing early on a model whose forward is slow
FLUSH_BYTES = 64 << 20  # more than the last-level cache of most CPUs

Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def lean_unsupported(model: Any) -> str | None:
    """Why `LeanDecoder` cannot run this model exactly, or None when it can."""
    reason = architecture_unsupported(model)
    if reason is not None:
        return reason
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        return "the model spans several devices"
    return None


def architecture_unsupported(model: Any) -> str | None:
    """Why this model's forward is not the Llama-style arithmetic the lean and graph paths
    run (whatever its devices), or None when it is."""
    name = type(model).__name__
    expected_type = LEAN_ARCHITECTURES.get(name)
    if expected_type is None or not type(model).__module__.startswith("transformers.models."):
        return f"{type(model).__module__}.{name} is not a known Llama-style architecture"
    config = model.config
    if getattr(config, "model_type", None) != expected_type:
        return f"model_type {getattr(config, 'model_type', None)!r} does not match {name}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r} (only silu)"
    if getattr(config, "sliding_window", None) is not None:
        return "sliding-window attention"
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        return f"layer types {sorted(set(layer_types))}"
    rope = getattr(config, "rope_parameters", None)
    rope_type = rope.get("rope_type") if isinstance(rope, dict) else None  # None: per layer type
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r}"
    if model.training:
        return "the model is in training mode"
    if any(getattr(layer.self_attn, "sliding_window", None) for layer in model.model.layers):
        return "sliding-window attention in a layer"
    return None


def numpy_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` through numpy's BLAS, for float32 tensors on the CPU. Fastest when the
    weight is stored column-major (see `store_transposed`): `weight.T` is then contiguous."""
    y = torch.from_numpy(x.numpy() @ weight.numpy().T)
    return y if bias is None else y + bias


def store_transposed(weight: torch.Tensor) -> None:
    """Re-lay a [out, in] weight column-major in place: same values and shape, one copy.

    A CPU decode step's product reads the whole weight once, and both BLAS libraries stream
    it faster as a contiguous [in, out] operand: see docs/demo-models.md. The module keeps
    working on the view.
    """
    if weight.dim() == 2 and not weight.t().is_contiguous():
        with torch.no_grad():
            weight.data = weight.data.t().contiguous().t()


def numpy_blas_one_thread() -> Any | None:
    """Limit numpy's BLAS to the calling thread; the limiter (to undo it), or None when
    threadpoolctl (a dependency of specdeck) is missing and nothing could be done.

    Left at their default, its threads spin against torch's OpenMP workers for the same
    cores: with two of each on the 2-core VM, the demo draft's six forwards took 138 ms a
    step instead of 8. A one-row product gains nothing from threads anyway. Only numpy's
    own library is limited; a torch built on OpenBLAS keeps its threads.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    controller = ThreadpoolController()
    paths = [
        info["filepath"]
        for info in controller.info()
        if info["user_api"] == "blas"
        and ("numpy" in info["filepath"] or "scipy_openblas" in info["filepath"])
    ]
    return controller.select(filepath=paths).limit(limits=1)


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's weight tensors (the HF modules hold views of the stacked ones)."""

    input_norm: torch.Tensor
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # q, k and v projections stacked
    o: tuple[torch.Tensor, torch.Tensor | None]
    q_norm: torch.Tensor | None  # Qwen3's per-head RMSNorm of queries and keys
    k_norm: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: tuple[torch.Tensor, torch.Tensor | None]  # gate and up projections stacked
    down: tuple[torch.Tensor, torch.Tensor | None]


def stack_projections(
    modules: list[torch.nn.Linear], column_major: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [sum of outputs, in] weight for projections of the same input, and its bias.

    The modules' weights become views into the stacked one, so the model keeps working and
    holds its weights once; a decode step then runs one product instead of two or three.
    `column_major` stores the stack transposed (see `store_transposed`).
    """
    with torch.no_grad():
        stacked = torch.cat([m.weight.detach() for m in modules])
        if column_major:
            stacked = stacked.t().contiguous().t()
        start = 0
        for module in modules:
            rows = module.weight.shape[0]
            module.weight.data = stacked[start : start + rows]
            start += rows
        if all(m.bias is None for m in modules):
            return stacked, None
        biases = [
            m.bias.detach() if m.bias is not None else stacked.new_zeros(m.weight.shape[0])
            for m in modules
        ]
        return stacked, torch.cat(biases)


def layer_weights(layer: Any, column_major: bool) -> LayerWeights:
    """One HF decoder layer's weights, q/k/v and gate/up stacked (see `stack_projections`)."""
    attn, mlp = layer.self_attn, layer.mlp
    q_norm = getattr(attn, "q_norm", None)
    k_norm = getattr(attn, "k_norm", None)
    if column_major:
        store_transposed(attn.o_proj.weight)
        store_transposed(mlp.down_proj.weight)
    return LayerWeights(
        input_norm=layer.input_layernorm.weight,
        qkv=stack_projections([attn.q_proj, attn.k_proj, attn.v_proj], column_major),
        o=(attn.o_proj.weight, attn.o_proj.bias),
        q_norm=None if q_norm is None else q_norm.weight,
        k_norm=None if k_norm is None else k_norm.weight,
        post_norm=layer.post_attention_layernorm.weight,
        gate_up=stack_projections([mlp.gate_proj, mlp.up_proj], column_major),
        down=(mlp.down_proj.weight, mlp.down_proj.bias),
    )


class LeanDecoder:
    """Forwards new tokens after a flat KV cache; `crop(n)` keeps the first n tokens.

    `matmul` is "auto" (float32 on a CPU: the faster of torch's and numpy's BLAS, probed at
    construction), "torch" or "numpy" (float32 on the CPU only); `self.matmul` says which
    one runs.

    The model is changed in place, values untouched: its q/k/v and gate/up weights become
    views of stacked tensors, column-major on a CPU in float32. Its own forward still runs;
    saving it with safetensors would need `.contiguous()` copies of the shared weights.
    """

    def __init__(self, model: Any, matmul: str = "auto") -> None:
        reason = lean_unsupported(model)
        if reason is not None:
            raise ValueError(f"no lean decode path: {reason}")
        if matmul not in MATMULS:
            raise ValueError(f"matmul must be one of {', '.join(MATMULS)}, not {matmul!r}")
        config = model.config
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.device = self.embed.device
        self.dtype = self.embed.dtype
        # on a CPU, float32 products run fastest on column-major weights, through torch's
        # or numpy's BLAS (see the module's docstring); elsewhere weights keep their layout
        cpu_float32 = self.device.type == "cpu" and self.dtype == torch.float32
        if matmul == "numpy" and not cpu_float32:
            raise ValueError("numpy matmul needs float32 weights on the CPU")
        self.final_norm = inner.norm.weight
        if cpu_float32:
            store_transposed(model.lm_head.weight)  # a tied embedding is re-laid with it
        self.lm_head = model.lm_head.weight
        self.eps = float(config.rms_norm_eps)
        self.rotary = inner.rotary_emb
        first = inner.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.groups = self.heads // self.kv_heads
        self.scaling = float(first.scaling)
        self.layers = [self._layer(layer, cpu_float32) for layer in inner.layers]
        self.matmul = "torch"
        self._linear: Linear = F.linear
        self.length = 0
        self._keys = self._values = torch.empty(0)
        self._cos = self._sin = torch.empty(0)
        with torch.inference_mode():
            self._allocate(INITIAL_CAPACITY)
        if matmul != "torch" and cpu_float32:
            self._use_numpy_if_faster(forced=matmul == "numpy")

    def _use_numpy_if_faster(self, forced: bool) -> None:
        """Multiply through numpy's BLAS if `forced`, or if it decodes faster here.

        The probe times this model's own decode steps both ways, alternately, each round
        starting from caches flushed as a target's forward flushes them between drafts, and
        compares the best round of each. On the development VM (AMD EPYC) numpy wins; on the
        lent GPU host's Intel Xeon, torch (MKL) does: see docs/demo-models.md.
        """
        limiter = numpy_blas_one_thread()
        if limiter is None:
            if forced:
                raise ValueError("numpy matmul needs threadpoolctl (pip install threadpoolctl)")
            return  # unpinned, numpy's threads would fight torch's for the cores
        if forced or self._probe_numpy_wins():
            self.matmul, self._linear = "numpy", numpy_linear
        else:
            limiter.restore_original_limits()

    @torch.inference_mode()
    def _probe_numpy_wins(self) -> bool:
        flush = torch.empty(FLUSH_BYTES // 4)
        token = torch.zeros(1, dtype=torch.long)
        best = {"torch": float("inf"), "numpy": float("inf")}
        deadline = time.perf_counter() + PROBE_BUDGET_S
        for _ in range(PROBE_ROUNDS):
            for name, linear in (("torch", F.linear), ("numpy", numpy_linear)):
                self._linear = linear
                flush.fill_(1.0)
                start = time.perf_counter()
                for _ in range(PROBE_STEPS):
                    self.forward(token)
                best[name] = min(best[name], time.perf_counter() - start)
                self.reset()
            if time.perf_counter() > deadline:
                break
        self._linear = F.linear
        return best["numpy"] < best["torch"]

    @staticmethod
    def _layer(layer: Any, column_major: bool) -> LayerWeights:
        return layer_weights(layer, column_major)

    @property
    def capacity(self) -> int:
        """Tokens the cache holds before it must grow."""
        return self._keys.shape[2]

    def _allocate(self, capacity: int) -> None:
        """(Re)allocate cache and rotary tables for `capacity` tokens, keeping what is held."""
        shape = (len(self.layers), self.kv_heads, capacity, self.head_dim)
        keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.length:
            keys[:, :, : self.length] = self._keys[:, :, : self.length]
            values[:, :, : self.length] = self._values[:, :, : self.length]
        self._keys, self._values = keys, values
        positions = torch.arange(capacity, device=self.device).unsqueeze(0)
        # the model's own rotary module: every rope type and scaling it knows, exactly
        cos, sin = self.rotary(self.embed[:1].unsqueeze(0), positions)
        self._cos, self._sin = cos[0], sin[0]

    def reset(self) -> None:
        """Forget every cached token."""
        self.length = 0

    def crop(self, keep: int) -> None:
        """Keep the first `keep` cached tokens (O(1): the rest is overwritten later)."""
        if not 0 <= keep <= self.length:
            raise ValueError(f"cannot keep {keep} tokens of a cache holding {self.length}")
        self.length = keep

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits [n or 1, vocab] for n new tokens (a 1-D tensor), which join the cache."""
        n = token_ids.shape[0]
        start, end = self.length, self.length + n
        if end > self.capacity:
            self._allocate(max(2 * self.capacity, end))
        x = F.embedding(token_ids.to(self.device), self.embed)
        cos, sin = self._cos[start:end], self._sin[start:end]
        mask = None
        if n > 1:  # query i sits at position start + i and sees keys up to it
            cols = torch.arange(end, device=self.device)
            rows = torch.arange(start, end, device=self.device)
            mask = (cols[None, :] <= rows[:, None]).repeat(self.groups, 1)
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, self._norm(x, layer.input_norm), cos, sin, mask)
            gate, up = self._linear(self._norm(x, layer.post_norm), *layer.gate_up).chunk(2, -1)
            x = x + self._linear(F.silu(gate) * up, *layer.down)
        self.length = end
        if last_only:
            x = x[-1:]
        return self._linear(self._norm(x, self.final_norm), self.lm_head, None)

    def _attention(self, index, layer: LayerWeights, h, cos, sin, mask) -> torch.Tensor:
        """Self-attention of n new positions over the cache; their keys/values join it."""
        n, d = h.shape[0], self.head_dim
        qkv = self._linear(h, *layer.qkv).view(n, self.heads + 2 * self.kv_heads, d)
        qk, v = qkv[:, : self.heads + self.kv_heads], qkv[:, self.heads + self.kv_heads :]
        if layer.q_norm is not None:
            qk = torch.cat(
                (
                    self._norm(qk[:, : self.heads], layer.q_norm),
                    self._norm(qk[:, self.heads :], layer.k_norm),
                ),
                dim=1,
            )
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [n, 1, d]: the same for every head
        qk = qk * cos + _rotate_half(qk) * sin  # queries and keys rotate alike
        q, k = qk[:, : self.heads], qk[:, self.heads :]
        start, end = self.length, self.length + n
        self._keys[index, :, start:end] = k.transpose(0, 1)
        self._values[index, :, start:end] = v.transpose(0, 1)
        keys = self._keys[index, :, :end]
        values = self._values[index, :, :end]
        # heads h*groups .. h*groups+groups-1 share KV head h: fold them into the query rows
        q = q.view(n, self.kv_heads, self.groups, d).permute(1, 2, 0, 3)
        q = q.reshape(self.kv_heads, self.groups * n, d)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        out = out.view(self.kv_heads, self.groups, n, d).permute(2, 0, 1, 3).reshape(n, -1)
        return self._linear(out, *layer.o)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers computes it (in float32, then back to x's dtype)."""
        if x.dtype == torch.float32:  # the same arithmetic in one fused kernel
            return F.rms_norm(x, weight.shape, weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)


class HFDecoder:
    """The same session over transformers' own forward and cache: any model it loads."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.device = loaded.input_device
        self._cache: Any = None

    @property
    def length(self) -> int:
        """Tokens the cache holds."""
        return 0 if self._cache is None else cache_length(self._cache)

    def reset(self) -> None:
        """Forget every cached token."""
        self._cache = None

    def crop(self, keep: int) -> None:
        """Keep the first `keep` cached tokens."""
        if self._cache is None:
            if keep:
                raise ValueError(f"cannot keep {keep} tokens of an empty cache")
            return
        crop_cache(self._cache, keep)

    def forward(self, token_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits [n or 1, vocab] for n new tokens (a 1-D tensor), which join the cache."""
        logits, self._cache = self.loaded.forward(token_ids.view(1, -1), self._cache, last_only)
        return logits


def open_decoder(
    loaded: LoadedModel, lean: bool = True, matmul: str = "auto"
) -> LeanDecoder | HFDecoder:
    """A `LeanDecoder` where the model allows one (and `lean`), else an `HFDecoder`."""
    if lean and lean_unsupported(loaded.model) is None:
        return LeanDecoder(loaded.model, matmul)
    return HFDecoder(loaded)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
