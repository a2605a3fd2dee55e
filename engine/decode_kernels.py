"""Fused Triton kernels for the graph decode path's small per-layer work.

At batch 1 a decode step's matrix products read the weights near the memory's speed; what
is left is latency: every small kernel costs microseconds, and a layer of eager torch ops
launches about 25 of them. Measured on an H200 (benchmarks/decode_profile.py): cuDNN's
attention took 14 us a layer over a 512-token cache, and a 0.6B draft spent 2.7 ms a token
in 714 kernels. These kernels fold the query/key norm, the rotary embedding and the cache
write into one launch, split attention over the cache into blocks run in parallel
(flash-decoding) with the per-row causal limit read from the device, and fuse SiLU-gating
and RMSNorm. `GraphDecoder` checks them against the torch ops on the device before use
and keeps the torch ops where Triton is missing or disagrees.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheels: the graph path keeps torch's ops
    triton = None
    tl = None

SPLIT_BLOCK = 64  # keys per block of a split
TARGET_PROGRAMS = 128  # about one per multiprocessor of an H100/H200


def available() -> bool:
    """Whether Triton is importable here."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, w_ptr, out_ptr, stride_x, stride_out, n_cols, eps, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        valid = cols < n_cols
        x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
        y = x * rstd * w
        tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, width, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = cols < width
        gate = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * stride_x + width + cols, mask=valid, other=0.0).to(tl.float32)
        y = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _qk_rope_cache_kernel(
        qkv_ptr,
        stride_qkv,
        pos_ptr,
        rope_ptr,
        qnorm_ptr,
        knorm_ptr,
        q_out_ptr,
        k_cache_ptr,
        v_cache_ptr,
        stride_cache_head,
        eps,
        HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        D: tl.constexpr,
        QK_NORM: tl.constexpr,
    ):
        """One (token, head): queries and keys normed and rotated, keys and values written
        into the cache at the token's position, queries into q_out [n, HEADS, D]."""
        t = tl.program_id(0)
        j = tl.program_id(1)
        half: tl.constexpr = D // 2
        cols = tl.arange(0, D)
        rolled = (cols + half) % D  # roll(x, D/2): rotate_half up to the sign in rope's sin
        pos = tl.load(pos_ptr + t)
        base = qkv_ptr + t * stride_qkv + j * D
        if j < HEADS + KV_HEADS:
            x = tl.load(base + cols).to(tl.float32)
            xr = tl.load(base + rolled).to(tl.float32)
            if QK_NORM:
                rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
                if j < HEADS:  # noqa: SIM108 - a runtime branch inside the kernel
                    w_ptr = qnorm_ptr
                else:
                    w_ptr = knorm_ptr
                w = tl.load(w_ptr + cols).to(tl.float32)
                wr = tl.load(w_ptr + rolled).to(tl.float32)
                x = (x * rstd).to(q_out_ptr.dtype.element_ty).to(tl.float32) * w
                xr = (xr * rstd).to(q_out_ptr.dtype.element_ty).to(tl.float32) * wr
                x = x.to(q_out_ptr.dtype.element_ty).to(tl.float32)
                xr = xr.to(q_out_ptr.dtype.element_ty).to(tl.float32)
            cos = tl.load(rope_ptr + pos * (2 * D) + cols).to(tl.float32)
            sin = tl.load(rope_ptr + pos * (2 * D) + D + cols).to(tl.float32)
            y = (x * cos + xr * sin).to(q_out_ptr.dtype.element_ty)
            if j < HEADS:
                tl.store(q_out_ptr + (t * HEADS + j) * D + cols, y)
            else:
                head = j - HEADS
                tl.store(k_cache_ptr + head * stride_cache_head + pos * D + cols, y)
        else:
            head = j - HEADS - KV_HEADS
            v = tl.load(base + cols)
            tl.store(v_cache_ptr + head * stride_cache_head + pos * D + cols, v)

    @triton.jit
    def _attention_split_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        pos_ptr,
        o_ptr,
        ml_ptr,
        stride_cache_head,
        n_tokens,
        capacity,
        scale,
        HEADS: tl.constexpr,
        GROUPS: tl.constexpr,
        D: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
        BLOCKS: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Rows (token, group) of one KV head against one split of the cache: unnormalised
        output and (max, sum) per row, for `_attention_combine_kernel`."""
        kv = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        rows = tl.arange(0, ROWS)
        token = rows // GROUPS
        head = kv * GROUPS + rows % GROUPS
        live = token < n_tokens
        cols = tl.arange(0, D)
        q = tl.load(
            q_ptr + (token[:, None] * HEADS + head[:, None]) * D + cols[None, :],
            mask=live[:, None],
            other=0.0,
        )
        limit = tl.load(pos_ptr + token, mask=live, other=-1)  # keys 0..limit are seen
        last = tl.load(pos_ptr + n_tokens - 1)  # keys past it are never loaded
        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, D], tl.float32)
        k_base = k_ptr + kv * stride_cache_head
        v_base = v_ptr + kv * stride_cache_head
        for b in range(BLOCKS):
            keys = (split * BLOCKS + b) * BLOCK + tl.arange(0, BLOCK)
            inside = (keys < capacity) & (keys <= last)
            k = tl.load(k_base + keys[None, :] * D + cols[:, None], mask=inside[None, :], other=0.0)
            if IEEE:  # noqa: SIM108 - chosen when the kernel compiles
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            s = s * scale
            seen = (keys[None, :] <= limit[:, None]) & inside[None, :]
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + keys[:, None] * D + cols[None, :], mask=inside[:, None], other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out_rows = (kv * n_splits + split) * ROWS + rows
        tl.store(o_ptr + out_rows[:, None] * D + cols[None, :], acc)
        tl.store(ml_ptr + out_rows * 2, m_i)
        tl.store(ml_ptr + out_rows * 2 + 1, l_i)

    @triton.jit
    def _attention_combine_kernel(
        o_ptr,
        ml_ptr,
        out_ptr,
        n_splits,
        HEADS: tl.constexpr,
        GROUPS: tl.constexpr,
        D: tl.constexpr,
        ROWS: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        """One (token, head) row: the splits' partial softmaxes merged, out [n, HEADS, D]."""
        t = tl.program_id(0)
        h = tl.program_id(1)
        kv = h // GROUPS
        row = t * GROUPS + h % GROUPS
        splits = tl.arange(0, SPLITS)
        valid = splits < n_splits
        index = (kv * n_splits + splits) * ROWS + row
        m = tl.load(ml_ptr + index * 2, mask=valid, other=float("-inf"))
        l_part = tl.load(ml_ptr + index * 2 + 1, mask=valid, other=0.0)
        m_max = tl.max(m, axis=0)
        weight = tl.where(valid & (m > float("-inf")), tl.exp(m - m_max), 0.0)
        cols = tl.arange(0, D)
        o = tl.load(o_ptr + index[:, None] * D + cols[None, :], mask=valid[:, None], other=0.0)
        total = tl.sum(weight * l_part, axis=0)
        y = tl.sum(o * weight[:, None], axis=0) / total
        tl.store(out_ptr + (t * HEADS + h) * D + cols, y.to(out_ptr.dtype.element_ty))


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of each row of a 2-D tensor (fp32 arithmetic, one rounding)."""
    out = torch.empty_like(x)
    block = _pow2(x.shape[1])
    _rms_norm_kernel[(x.shape[0],)](
        x,
        weight,
        out,
        x.stride(0),
        out.stride(0),
        x.shape[1],
        eps,
        BLOCK=block,
        num_warps=8 if block >= 4096 else 4,
    )
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [n, 2I] gate/up rows; [n, I]."""
    n, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((n, width), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(n, triton.cdiv(width, block))](
        gate_up, out, gate_up.stride(0), out.stride(0), width, BLOCK=block, num_warps=4
    )
    return out


def qk_rope_cache(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rope: torch.Tensor,
    q_norm: torch.Tensor | None,
    k_norm: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
    kv_heads: int,
    eps: float,
) -> torch.Tensor:
    """Queries [n, heads, d] normed and rotated; keys and values into the cache rows at
    `positions` (keys rotated). `rope` is [capacity, 2d]: cos, then sin signed for roll."""
    n, d = qkv.shape[0], keys.shape[-1]
    q = torch.empty((n, heads, d), dtype=qkv.dtype, device=qkv.device)
    norm = q_norm is not None
    _qk_rope_cache_kernel[(n, heads + 2 * kv_heads)](
        qkv,
        qkv.stride(0),
        positions,
        rope,
        q_norm if norm else rope,
        k_norm if norm else rope,
        q,
        keys,
        values,
        keys.stride(0),
        eps,
        HEADS=heads,
        KV_HEADS=kv_heads,
        D=d,
        QK_NORM=norm,
        num_warps=1,
    )
    return q


def attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of q [n, heads, d] over a cache [kv_heads, capacity, d] where token t sees
    keys 0..positions[t]; [n, heads * d]. Flash-decoding: splits in parallel, then merged."""
    n, heads, d = q.shape
    kv_heads, capacity = keys.shape[0], keys.shape[1]
    groups = heads // kv_heads
    rows = max(16, _pow2(n * groups))
    blocks = triton.cdiv(capacity, SPLIT_BLOCK)
    splits = max(1, min(blocks, TARGET_PROGRAMS // kv_heads))
    split_len = triton.cdiv(blocks, splits) * SPLIT_BLOCK
    splits = triton.cdiv(capacity, split_len)
    partial = torch.empty((kv_heads * splits * rows, d), dtype=torch.float32, device=q.device)
    ml = torch.empty((kv_heads * splits * rows, 2), dtype=torch.float32, device=q.device)
    _attention_split_kernel[(kv_heads, splits)](
        q,
        keys,
        values,
        positions,
        partial,
        ml,
        keys.stride(0),
        n,
        capacity,
        scale,
        HEADS=heads,
        GROUPS=groups,
        D=d,
        ROWS=rows,
        BLOCK=SPLIT_BLOCK,
        BLOCKS=split_len // SPLIT_BLOCK,
        IEEE=q.dtype == torch.float32,
        num_warps=4 if rows <= 64 else 8,
    )
    out = torch.empty((n, heads, d), dtype=q.dtype, device=q.device)
    _attention_combine_kernel[(n, heads)](
        partial,
        ml,
        out,
        splits,
        HEADS=heads,
        GROUPS=groups,
        D=d,
        ROWS=rows,
        SPLITS=_pow2(splits),
        num_warps=2,
    )
    return out.view(n, heads * d)


def self_check(
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_dim: int,
    hidden: int,
    qk_norm: bool,
) -> str | None:
    """Each kernel against the torch ops on random data of this model's shapes; None when
    they agree (to float rounding), else what disagreed."""
    import torch.nn.functional as F

    gen = torch.Generator(device="cpu").manual_seed(0)
    tol = 1e-4 if dtype == torch.float32 else 3e-2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    def close(name: str, got: torch.Tensor, want: torch.Tensor) -> str | None:
        err = (got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30)
        return None if err <= tol and torch.isfinite(got).all() else f"{name}: error {err:.2e}"

    x, w = rand(3, hidden), rand(hidden)
    problems = [close("rms_norm", rms_norm(x, w, 1e-6), F.rms_norm(x, (hidden,), w, 1e-6))]
    gate_up = rand(3, 2 * hidden)
    gate, up = gate_up.chunk(2, dim=-1)
    problems.append(close("silu_mul", silu_mul(gate_up), F.silu(gate) * up))
    d, capacity = head_dim, 320
    for n in (1, 5):
        keys = torch.zeros(kv_heads, capacity, d, dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        keys[:, :200], values[:, :200] = rand(kv_heads, 200, d), rand(kv_heads, 200, d)
        positions = torch.arange(200, 200 + n, device=device)
        qkv = rand(n, (heads + 2 * kv_heads) * d)
        qw, kw = (rand(d), rand(d)) if qk_norm else (None, None)
        rope = rand(capacity, 2 * d)
        want_keys, want_values = keys.clone(), values.clone()
        q = qk_rope_cache(qkv, positions, rope, qw, kw, keys, values, heads, kv_heads, 1e-6)
        qk = qkv[:, : (heads + kv_heads) * d].view(n, heads + kv_heads, d).float()
        if qk_norm:
            qk = torch.cat(
                (
                    F.rms_norm(qk[:, :heads], (d,), qw.float(), 1e-6),
                    F.rms_norm(qk[:, heads:], (d,), kw.float(), 1e-6),
                ),
                dim=1,
            )
        cos, sin = rope[positions].float().unsqueeze(1).chunk(2, dim=-1)
        qk = qk * cos + torch.roll(qk, d // 2, dims=-1) * sin
        want_keys[:, positions] = qk[:, heads:].transpose(0, 1).to(dtype)
        want_values[:, positions] = (
            qkv[:, (heads + kv_heads) * d :].view(n, kv_heads, d).transpose(0, 1)
        )
        problems.append(close(f"queries n={n}", q, qk[:, :heads]))
        problems.append(close(f"keys n={n}", keys, want_keys))
        problems.append(close(f"values n={n}", values, want_values))
        out = attention(q, keys, values, positions, d**-0.5)
        groups = heads // kv_heads
        qf = (
            q.float()
            .view(n, kv_heads, groups, d)
            .permute(1, 0, 2, 3)
            .reshape(kv_heads, n * groups, d)
        )
        rows = positions.repeat_interleave(groups)
        mask = torch.arange(capacity, device=device)[None, :] <= rows[:, None]
        ref = F.scaled_dot_product_attention(
            qf, keys.float(), values.float(), attn_mask=mask, scale=d**-0.5
        )
        ref = ref.view(kv_heads, n, groups, d).permute(1, 0, 2, 3).reshape(n, heads * d)
        problems.append(close(f"attention n={n}", out, ref))
    found = [p for p in problems if p is not None]
    return "; ".join(found) if found else None
