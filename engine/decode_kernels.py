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

A small draft is launch-bound even so: a 0.6B model's 28 layers ran 374 kernels a token,
its products cuBLAS GEMVs of 4-12 MB at 5-11 us each. `linear` multiplies a few rows in
one kernel that also does what came before or after the product (RMSNorm of the input,
SiLU gating of a [gate, up] row, bias, the residual add), and every kernel here can be
launched with programmatic dependent launch (Hopper), so that it loads its weights while
the kernel before it finishes: a draft layer is 7 launches instead of 10-13.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheels: the graph path keeps torch's ops
    triton = None
    tl = None

SPLIT_BLOCK = 64  # keys per block of a split
TARGET_PROGRAMS = 128  # about one per multiprocessor of an H100/H200
GEMV_ROWS = 4  # `linear` serves products of at most this many rows
GEMV_TILE = 16384  # weight elements a program holds: 32 KB of bf16, in registers
GEMV_MAX_IN = 16384  # widest input a program covers whole (one row of the weight)
GEMV_PROGRAMS_PER_SM = 1  # fewer outputs a program until there are this many programs
GEMV_WARPS = 4  # warps a program; 0: 8 for a full tile, else 4


def available() -> bool:
    """Whether Triton is importable here."""
    return triton is not None


def pdl_available(device: torch.device) -> bool:
    """Whether this GPU has programmatic dependent launch (Hopper and later): a kernel
    launched with it (`pdl=True` below) starts while the one before it finishes, loads
    what no kernel writes (its weights), and waits for the earlier kernels
    (`griddepcontrol.wait`) before it reads their results or writes anything."""
    return (
        triton is not None
        and device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


if triton is not None:

    @triton.jit
    def _wait_for_earlier(PDL: tl.constexpr):
        """Under programmatic dependent launch: wait until the kernels before this one are
        done and their writes visible, then let the next kernel start (it waits too)."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _rms_norm_kernel(
        x_ptr,
        w_ptr,
        out_ptr,
        stride_x,
        stride_out,
        n_cols,
        eps,
        BLOCK: tl.constexpr,
        PDL: tl.constexpr,
    ):
        _wait_for_earlier(PDL)
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        valid = cols < n_cols
        x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
        y = x * rstd * w
        tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _silu_mul_kernel(
        x_ptr, out_ptr, stride_x, stride_out, width, BLOCK: tl.constexpr, PDL: tl.constexpr
    ):
        _wait_for_earlier(PDL)
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
        PDL: tl.constexpr,
    ):
        """One (token, head): queries and keys normed and rotated by the token's row of
        `rope` [n, 2D], keys and values written into the cache at the token's position,
        queries into q_out [n, HEADS, D]."""
        _wait_for_earlier(PDL)
        t = tl.program_id(0)
        j = tl.program_id(1)
        half: tl.constexpr = D // 2
        cols = tl.arange(0, D)
        rolled = (cols + half) % D  # roll(x, D/2): rotate_half up to the sign in rope's sin
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
            cos = tl.load(rope_ptr + t * (2 * D) + cols).to(tl.float32)
            sin = tl.load(rope_ptr + t * (2 * D) + D + cols).to(tl.float32)
            y = (x * cos + xr * sin).to(q_out_ptr.dtype.element_ty)
            if j < HEADS:
                tl.store(q_out_ptr + (t * HEADS + j) * D + cols, y)
            else:
                head = j - HEADS
                pos = tl.load(pos_ptr + t)
                tl.store(k_cache_ptr + head * stride_cache_head + pos * D + cols, y)
        else:
            head = j - HEADS - KV_HEADS
            v = tl.load(base + cols)
            pos = tl.load(pos_ptr + t)
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
        PDL: tl.constexpr,
    ):
        """Rows (token, group) of one KV head against one split of the cache: unnormalised
        output and (max, sum) per row, for `_attention_combine_kernel`."""
        _wait_for_earlier(PDL)
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
            # loaded with the keys, not after the softmax: one wait on memory, not two
            v = tl.load(v_base + keys[:, None] * D + cols[None, :], mask=inside[:, None], other=0.0)
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
        PDL: tl.constexpr,
    ):
        """One (token, head) row: the splits' partial softmaxes merged, out [n, HEADS, D]."""
        _wait_for_earlier(PDL)
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

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        stride_x,
        norm_ptr,
        w_ptr,
        bias_ptr,
        res_ptr,
        stride_res,
        out_ptr,
        stride_out,
        n_out,
        n_in,
        eps,
        ROWS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        NORM: tl.constexpr,
        SILU: tl.constexpr,
        BIAS: tl.constexpr,
        RESIDUAL: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """BLOCK_N outputs of ROWS rows: out = f(x) W^T (+ bias) (+ res), W [n_out, n_in]
        whole rows of it held in registers, loaded before waiting for the earlier kernels.
        f(x) is RMSNorm with weight `norm` (NORM), silu(gate) * up of a [2 n_in] row (SILU),
        or x; it is rounded to the activations' type as the separate kernels round it."""
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.arange(0, BLOCK_K)
        n_ok = n < n_out
        k_ok = k < n_in
        w = tl.load(
            w_ptr + n[:, None] * n_in + k[None, :],
            mask=n_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        if NORM:
            norm = tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        if BIAS:
            bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        _wait_for_earlier(PDL)
        kind = out_ptr.dtype.element_ty
        for r in tl.static_range(ROWS):
            row = x_ptr + r * stride_x
            if RESIDUAL:  # loaded with the input, not after the product: one wait, not two
                res = tl.load(res_ptr + r * stride_res + n, mask=n_ok, other=0.0).to(tl.float32)
            if SILU:
                gate = tl.load(row + k, mask=k_ok, other=0.0).to(tl.float32)
                up = tl.load(row + n_in + k, mask=k_ok, other=0.0).to(tl.float32)
                h = (gate / (1.0 + tl.exp(-gate)) * up).to(kind).to(tl.float32)
            else:
                h = tl.load(row + k, mask=k_ok, other=0.0).to(tl.float32)
            if NORM:
                rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / n_in + eps)
                h = (h * rstd * norm).to(kind).to(tl.float32)
            y = tl.sum(w.to(tl.float32) * h[None, :], axis=1)
            if BIAS:
                y += bias
            if RESIDUAL:
                y += res
            tl.store(out_ptr + r * stride_out + n, y.to(kind), mask=n_ok)


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, pdl: bool = False) -> torch.Tensor:
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
        PDL=pdl,
        num_warps=8 if block >= 4096 else 4,
        launch_pdl=pdl,
    )
    return out


def silu_mul(gate_up: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """silu(gate) * up for [n, 2I] gate/up rows; [n, I]."""
    n, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((n, width), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(n, triton.cdiv(width, block))](
        gate_up,
        out,
        gate_up.stride(0),
        out.stride(0),
        width,
        BLOCK=block,
        PDL=pdl,
        num_warps=4,
        launch_pdl=pdl,
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
    pdl: bool = False,
) -> torch.Tensor:
    """Queries [n, heads, d] normed and rotated; keys and values into the cache rows at
    `positions` (keys rotated). `rope` is [n, 2d], each token's row of the rotary table:
    cos, then sin signed for roll."""
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
        PDL=pdl,
        num_warps=1,
        launch_pdl=pdl,
    )
    return q


def attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
    pdl: bool = False,
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
        PDL=pdl,
        num_warps=4 if rows <= 64 else 8,
        launch_pdl=pdl,
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
        PDL=pdl,
        num_warps=2,
        launch_pdl=pdl,
    )
    return out.view(n, heads * d)


def gemv_fits(rows: int, n_in: int) -> bool:
    """Whether `linear` serves a product of `rows` rows with inputs `n_in` wide."""
    return rows <= GEMV_ROWS and _pow2(n_in) <= GEMV_MAX_IN


def linear(
    x: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor | None],
    *,
    norm: torch.Tensor | None = None,
    eps: float = 0.0,
    silu: bool = False,
    residual: torch.Tensor | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """f(x) W^T (+ b) (+ residual) for a few rows in one kernel (see `gemv_fits`), where
    f is RMSNorm with weight `norm`, or silu(gate) * up of x's [gate, up] halves (`silu`),
    or nothing. The same values as `rms_norm`/`silu_mul` then the product, to the order
    of the sums; at batch 1 a product reads its weight once, near the memory's speed."""
    weight, bias = weights
    n_out, n_in = weight.shape
    rows = x.shape[0]
    if not gemv_fits(rows, n_in) or x.shape[1] != (2 * n_in if silu else n_in):
        raise ValueError(f"linear: {rows} rows of {x.shape[1]} into a [{n_out}, {n_in}] weight")
    block_k = _pow2(n_in)
    block_n = max(1, min(64, GEMV_TILE // block_k))
    sms = _multiprocessors(x.device)
    while block_n > 1 and triton.cdiv(n_out, block_n) < GEMV_PROGRAMS_PER_SM * sms:
        block_n //= 2  # enough programs to fill the multiprocessors, where the weight allows
    out = torch.empty((rows, n_out), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n_out, block_n),)](
        x,
        x.stride(0),
        norm if norm is not None else weight,
        weight,
        bias if bias is not None else weight,
        residual if residual is not None else out,
        residual.stride(0) if residual is not None else 0,
        out,
        out.stride(0),
        n_out,
        n_in,
        eps,
        ROWS=rows,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        NORM=norm is not None,
        SILU=silu,
        BIAS=bias is not None,
        RESIDUAL=residual is not None,
        PDL=pdl,
        num_warps=GEMV_WARPS or (8 if block_n * block_k >= 8192 else 4),
        launch_pdl=pdl,
    )
    return out


def self_check(
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_dim: int,
    hidden: int,
    qk_norm: bool,
    *,
    intermediate: int | None = None,
    pdl: bool = False,
) -> str | None:
    """Each kernel against the torch ops on random data of this model's shapes (the
    products too when `intermediate` is given); None when they agree (to float rounding),
    else what disagreed. `pdl`: launched as the decoder launches them."""
    import torch.nn.functional as F

    gen = torch.Generator(device="cpu").manual_seed(0)
    tol = 1e-4 if dtype == torch.float32 else 3e-2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    def close(name: str, got: torch.Tensor, want: torch.Tensor) -> str | None:
        err = (got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30)
        return None if err <= tol and torch.isfinite(got).all() else f"{name}: error {err:.2e}"

    x, w = rand(3, hidden), rand(hidden)
    problems = [close("rms_norm", rms_norm(x, w, 1e-6, pdl), F.rms_norm(x, (hidden,), w, 1e-6))]
    gate_up = rand(3, 2 * hidden)
    gate, up = gate_up.chunk(2, dim=-1)
    problems.append(close("silu_mul", silu_mul(gate_up, pdl), F.silu(gate) * up))
    if intermediate is not None:
        problems += _check_products(
            rand, close, heads, kv_heads, head_dim, hidden, intermediate, pdl
        )
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
        rope_rows = rope.index_select(0, positions)
        q = qk_rope_cache(
            qkv, positions, rope_rows, qw, kw, keys, values, heads, kv_heads, 1e-6, pdl
        )
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
        out = attention(q, keys, values, positions, d**-0.5, pdl)
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


def _check_products(rand, close, heads, kv_heads, head_dim, hidden, intermediate, pdl):
    """`linear` in each of the decoder's four uses (and with a bias) against torch: norm
    then product, product plus residual, silu-gating then product plus residual."""
    import torch.nn.functional as F

    problems = []
    qkv_out = (heads + 2 * kv_heads) * head_dim
    # a few hundred output rows (not a multiple of the block) at the real input widths
    for rows in sorted({1, 2, GEMV_ROWS}):
        x, norm = rand(rows, hidden), rand(hidden)
        weight, bias = rand(min(qkv_out, 300) + 3, hidden), rand(min(qkv_out, 300) + 3)
        h = F.rms_norm(x.float(), (hidden,), norm.float(), 1e-6).to(x.dtype)
        for b in (None, bias):
            got = linear(x, (weight, b), norm=norm, eps=1e-6, pdl=pdl)
            problems.append(
                close(f"norm+linear rows={rows} bias={b is not None}", got, F.linear(h, weight, b))
            )
        attn, o = rand(rows, heads * head_dim), rand(hidden, heads * head_dim)
        got = linear(attn, (o, None), residual=x, pdl=pdl)
        problems.append(close(f"linear+residual rows={rows}", got, x + F.linear(attn, o)))
        gate_up, down = rand(rows, 2 * intermediate), rand(hidden, intermediate)
        gate, up = gate_up.float().chunk(2, dim=-1)
        act = (F.silu(gate) * up).to(x.dtype)
        got = linear(gate_up, (down, None), silu=True, residual=x, pdl=pdl)
        problems.append(close(f"silu+linear+residual rows={rows}", got, x + F.linear(act, down)))
    return problems
