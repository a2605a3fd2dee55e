"""Whether a persistent layer kernel would pay for the draft: a probe, not the product.

    python3 benchmarks/persistent_probe.py [--layers 28] [--warps 8,16]

On one GPU, bf16, Qwen3-0.6B widths (hidden 1024, q 2048, qkv 4096, intermediate 3072),
random weights, one token. Times, each as graph replays with CUDA events:
- `empty`: a chain of kernels that only wait for the one before (programmatic dependent
  launch), per launch: what a kernel boundary costs;
- `barrier`: one persistent kernel (one program a multiprocessor) passing N grid-wide
  barriers (an atomic counter in L2), per barrier;
- `linear`: a layer's four products through `decode_kernels.linear` (norm, gating and the
  residual fused, dependent launch): what the draft's layers do today, per layer;
- `persistent`: the same four products, norms, gating and residuals as one kernel a layer,
  its phases separated by grid barriers, each phase's weights loaded before the barrier
  in front of it; per layer, and checked against `linear`.
`--products` instead times each of the draft's products alone (a chain of launches over
distinct weights) at each register tile, warps and programs a multiprocessor of `linear`;
`--pdl` chains of empty kernels and of qkv-shaped products with and without dependent
launch, over distinct weights (from memory) and over one weight (from L2).

`--sass` compiles `linear`'s kernel for sm_90 (no GPU needed) and lists its loads around
the dependent-launch wait.

The barriers assume every program of the grid is resident at once (one a multiprocessor,
nothing else on the GPU): fine for a probe, not for product code.

Measured on one H200 (2026-12-02, docs/validation.md): a dependent launch 0.5 us, a grid
barrier 1.15 us (4 warps) to 2.7 us (16), `linear` 14.8 us a layer, `persistent` 18.9 us:
a barrier costs more than the kernel boundary it replaces, so the draft keeps its kernels.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from decode_floor import event_times  # noqa: E402

from engine import decode_kernels  # noqa: E402


@triton.jit
def _arrive(counter_ptr):
    """This program's writes done (block barrier), then one count on the grid's counter
    (release); the count before it, from which the caller derives its targets."""
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _wait_count(counter_ptr, target):
    """Spin on the counter (volatile loads, from L2) until the grid has arrived."""
    seen = tl.load(counter_ptr, volatile=True)
    while seen < target:
        seen = tl.load(counter_ptr, volatile=True)
    tl.debug_barrier()


@triton.jit
def _empty_kernel(out_ptr):
    tl.extra.cuda.gdc_wait()
    tl.extra.cuda.gdc_launch_dependents()
    if tl.program_id(0) == 0:
        tl.store(out_ptr, 1.0)


@triton.jit
def _barrier_kernel(counter_ptr, N: tl.constexpr, P: tl.constexpr):
    old = _arrive(counter_ptr)
    base = old - old % P
    _wait_count(counter_ptr, base + P)
    for i in range(1, N):
        _arrive(counter_ptr)
        _wait_count(counter_ptr, base + (i + 1) * P)


@triton.jit
def _tile(w_ptr, row0, n_out, K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    n = row0 + tl.arange(0, BN)
    k = tl.arange(0, BK)
    return tl.load(
        w_ptr + n[:, None] * K + k[None, :], mask=(n < n_out)[:, None] & (k < K)[None, :], other=0.0
    )


@triton.jit
def _normed(x_ptr, w_norm, K: tl.constexpr, BK: tl.constexpr, eps, kind: tl.constexpr):
    k = tl.arange(0, BK)
    x = tl.load(x_ptr + k, mask=k < K, other=0.0, cache_modifier=".cg").to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / K + eps)
    return (x * rstd * w_norm).to(kind).to(tl.float32)


@triton.jit
def _layer_kernel(
    x_ptr,
    out_ptr,
    qkv_ptr,
    h_ptr,
    act_ptr,
    in_norm_ptr,
    post_norm_ptr,
    wqkv_ptr,
    wo_ptr,
    wgu_ptr,
    wd_ptr,
    counter_ptr,
    eps,
    P: tl.constexpr,
    H: tl.constexpr,
    NQKV: tl.constexpr,
    A: tl.constexpr,
    INTER: tl.constexpr,
    BN1: tl.constexpr,
    BN2: tl.constexpr,
    BN3: tl.constexpr,
    BN4: tl.constexpr,
    BKH: tl.constexpr,
    BKA: tl.constexpr,
    BKI: tl.constexpr,
):
    kind = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    kh = tl.arange(0, BKH)
    w1 = _tile(wqkv_ptr, pid * BN1, NQKV, H, BN1, BKH)
    in_norm = tl.load(in_norm_ptr + kh, mask=kh < H, other=0.0).to(tl.float32)
    post_norm = tl.load(post_norm_ptr + kh, mask=kh < H, other=0.0).to(tl.float32)
    tl.extra.cuda.gdc_wait()
    # phase 1: qkv = norm(x) Wqkv^T
    h = _normed(x_ptr, in_norm, H, BKH, eps, kind)
    y = tl.sum(w1.to(tl.float32) * h[None, :], axis=1)
    n1 = pid * BN1 + tl.arange(0, BN1)
    tl.store(qkv_ptr + n1, y.to(kind), mask=n1 < NQKV)
    w2 = _tile(wo_ptr, pid * BN2, H, A, BN2, BKA)
    old = _arrive(counter_ptr)
    base = old - old % P
    _wait_count(counter_ptr, base + P)
    # phase 2 (attention's output stands in: the first A of qkv): h = x + a Wo^T
    ka = tl.arange(0, BKA)
    a = tl.load(qkv_ptr + ka, mask=ka < A, other=0.0, cache_modifier=".cg").to(tl.float32)
    n2 = pid * BN2 + tl.arange(0, BN2)
    y = tl.sum(w2.to(tl.float32) * a[None, :], axis=1)
    y += tl.load(x_ptr + n2, mask=n2 < H, other=0.0).to(tl.float32)
    tl.store(h_ptr + n2, y.to(kind), mask=n2 < H)
    wg = _tile(wgu_ptr, pid * BN3, INTER, H, BN3, BKH)
    wu = _tile(wgu_ptr + INTER * H, pid * BN3, INTER, H, BN3, BKH)
    _arrive(counter_ptr)
    _wait_count(counter_ptr, base + 2 * P)
    # phase 3: act = silu(gate) * up of norm(h) Wgu^T
    hn = _normed(h_ptr, post_norm, H, BKH, eps, kind)
    g = tl.sum(wg.to(tl.float32) * hn[None, :], axis=1)
    u = tl.sum(wu.to(tl.float32) * hn[None, :], axis=1)
    g = g.to(kind).to(tl.float32)
    u = u.to(kind).to(tl.float32)
    n3 = pid * BN3 + tl.arange(0, BN3)
    tl.store(act_ptr + n3, (g / (1.0 + tl.exp(-g)) * u).to(kind), mask=n3 < INTER)
    w4 = _tile(wd_ptr, pid * BN4, H, INTER, BN4, BKI)
    _arrive(counter_ptr)
    _wait_count(counter_ptr, base + 3 * P)
    tl.extra.cuda.gdc_launch_dependents()
    # phase 4: out = h + act Wd^T
    ki = tl.arange(0, BKI)
    act = tl.load(act_ptr + ki, mask=ki < INTER, other=0.0, cache_modifier=".cg").to(tl.float32)
    n4 = pid * BN4 + tl.arange(0, BN4)
    y = tl.sum(w4.to(tl.float32) * act[None, :], axis=1)
    y += tl.load(h_ptr + n4, mask=n4 < H, other=0.0, cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + n4, y.to(kind), mask=n4 < H)


def graph_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of a CUDA graph of `fn`'s launches, past the first two replays."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return statistics.median(event_times(torch, graph.replay, repeats)[2:])


PRODUCTS = {  # name: (n_out, n_in, how): the draft's products at Qwen3-0.6B widths
    "qkv": (4096, 1024, "norm"),
    "o": (1024, 2048, "residual"),
    "gate_up": (6144, 1024, "norm"),
    "down": (1024, 3072, "silu"),
    "lm_head": (151936, 1024, "norm"),
}


def product_chain(weights, how: str, x, norm, res) -> None:
    """One `linear` launch a weight, fused as the draft fuses that product."""
    for w in weights:
        if how == "norm":
            decode_kernels.linear(x, (w, None), norm=norm, eps=1e-6, pdl=True)
        elif how == "residual":
            decode_kernels.linear(x, (w, None), residual=res, pdl=True)
        else:
            decode_kernels.linear(x, (w, None), silu=True, residual=res, pdl=True)


def product_sweep(dev, sms: int) -> None:
    """Each product shape alone, a chain of launches over distinct weights (no L2 reuse),
    per launch, at each register tile / warps / programs a multiprocessor."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    defaults = (
        decode_kernels.GEMV_TILE,
        decode_kernels.GEMV_WARPS,
        decode_kernels.GEMV_PROGRAMS_PER_SM,
    )
    for name, (n_out, n_in, how) in PRODUCTS.items():
        copies = max(2, min(40, int(1.2e9 // (n_out * n_in * 2))))
        weights = [
            (torch.randn(n_out, n_in, generator=gen) * 0.02).to(dev, torch.bfloat16)
            for _ in range(copies)
        ]
        width = 2 * n_in if how == "silu" else n_in
        x = torch.randn(1, width, generator=gen).to(dev, torch.bfloat16)
        norm = torch.ones(n_in, device=dev, dtype=torch.bfloat16)
        res = torch.randn(1, n_out, generator=gen).to(dev, torch.bfloat16)
        floor_us = n_out * n_in * 2 / 4.3e12 * 1e6
        results = []
        for tile in (4096, 8192, 16384, 32768):
            for warps in (2, 4, 8):
                for per_sm in (1, 2, 4, 8):
                    decode_kernels.GEMV_TILE = tile
                    decode_kernels.GEMV_WARPS = warps
                    decode_kernels.GEMV_PROGRAMS_PER_SM = per_sm

                    chain = functools.partial(product_chain, weights, how, x, norm, res)
                    try:
                        us = graph_ms(chain, 10) / copies * 1e3
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile
                        print(name, tile, warps, per_sm, "error", str(exc)[:120])
                        continue
                    results.append((us, tile, warps, per_sm))
        results.sort()
        best = results[0]
        print(
            f"{name} [{n_out}x{n_in}] floor {floor_us:.2f} us: best {best[0]:.2f} us "
            f"(tile {best[1]}, warps {best[2]}, per-SM {best[3]}); top: "
            + "; ".join(f"{r[0]:.2f}@{r[1]}/{r[2]}/{r[3]}" for r in results[1:5])
            + "; at the defaults: "
            + "; ".join(f"{r[0]:.2f}" for r in results if r[1:] == defaults)
        )
    (
        decode_kernels.GEMV_TILE,
        decode_kernels.GEMV_WARPS,
        decode_kernels.GEMV_PROGRAMS_PER_SM,
    ) = defaults


@triton.jit
def _plain_empty_kernel(out_ptr):
    if tl.program_id(0) == 0:
        tl.store(out_ptr, 1.0)


def pdl_overlap(dev, sms: int) -> None:
    """Whether a product's weights stream while the kernel before it runs: chains of
    empty kernels and of qkv-shaped products, with and without dependent launch, over
    distinct weights (read from memory) and over one weight (read from L2)."""
    out = torch.zeros(1, device=dev)
    n = 1000
    for pdl in (False, True):
        kernel = _empty_kernel if pdl else _plain_empty_kernel
        ms = graph_ms(lambda k=kernel, p=pdl: [k[(sms,)](out, launch_pdl=p) for _ in range(n)])
        print(f"empty chain, dependent launch {pdl}: {ms / n * 1e3:.2f} us a kernel")
    gen = torch.Generator(device="cpu").manual_seed(2)
    n_out, n_in = PRODUCTS["qkv"][:2]
    weights = [
        (torch.randn(n_out, n_in, generator=gen) * 0.02).to(dev, torch.bfloat16) for _ in range(40)
    ]
    x = torch.randn(1, n_in, generator=gen).to(dev, torch.bfloat16)
    norm = torch.ones(n_in, device=dev, dtype=torch.bfloat16)

    def chain(ws, pdl):
        for w in ws:
            decode_kernels.linear(x, (w, None), norm=norm, eps=1e-6, pdl=pdl)

    for pdl in (False, True):
        for name, ws in (("distinct weights", weights), ("one weight (L2)", [weights[0]] * 40)):
            us = graph_ms(functools.partial(chain, ws, pdl)) / 40 * 1e3
            print(f"qkv chain, {name}, dependent launch {pdl}: {us:.2f} us a product")


def gemv_sass() -> None:
    """Compile `linear`'s kernel (qkv shape, norm, dependent launch) for sm_90 and print its
    memory loads and dependent-launch instructions in order, to check that the weights are
    loaded before `griddepcontrol.wait` (ACQBULK in SASS). Needs Triton, not a GPU."""
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget

    kernel = decode_kernels._gemv_kernel
    constants = {
        "ROWS": 1,
        "BLOCK_N": 16,
        "BLOCK_K": 1024,
        "NORM": True,
        "SILU": False,
        "BIAS": False,
        "RESIDUAL": False,
        "PDL": True,
    }
    ints = {"stride_x", "stride_res", "stride_out", "n_out", "n_in"}
    signature = {
        name: "constexpr"
        if name in constants
        else "i32"
        if name in ints
        else "fp32"
        if name == "eps"
        else "*bf16"
        for name in kernel.arg_names
    }
    # as Triton specialises a launch: pointers 16-byte aligned, sizes and strides multiples of 16
    aligned = [
        (i,) for i, name in enumerate(kernel.arg_names) if signature[name] in ("*bf16", "i32")
    ]
    source = triton.compiler.ASTSource(
        fn=kernel,
        signature=signature,
        constexprs=constants,
        attrs={key: [["tt.divisibility", 16]] for key in aligned},
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run(
            [str(tools / "cuobjdump"), "-sass", cubin.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    order = [
        word
        for line in sass.splitlines()
        for word in ("LDG", "ACQBULK", "PREEXIT", "STG")
        if f" {word}" in line
    ]
    wait = order.index("ACQBULK")
    print(" ".join(order))
    print(f"{order[:wait].count('LDG')} loads before the wait, {order[wait:].count('LDG')} after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--warps", default="8,16")
    parser.add_argument("--products", action="store_true", help="only the product sweep")
    parser.add_argument("--pdl", action="store_true", help="only the dependent-launch chains")
    parser.add_argument("--sass", action="store_true", help="only the product's SASS (no GPU)")
    args = parser.parse_args()
    if args.sass:
        gemv_sass()
        return
    torch.set_grad_enabled(False)
    dev = torch.device("cuda:0")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(
        torch.cuda.get_device_name(0),
        "SMs",
        sms,
        "torch",
        torch.__version__,
        "triton",
        triton.__version__,
    )
    if args.products:
        product_sweep(dev, sms)
        return
    if args.pdl:
        pdl_overlap(dev, sms)
        return

    out = torch.zeros(1, device=dev)
    n = 1000
    ms = graph_ms(lambda: [_empty_kernel[(sms,)](out, launch_pdl=True) for _ in range(n)])
    print(f"empty: {ms / n * 1e3:.2f} us a dependent launch ({sms} programs)")
    ms = graph_ms(lambda: [_empty_kernel[(1,)](out, launch_pdl=True) for _ in range(n)])
    print(f"empty: {ms / n * 1e3:.2f} us a dependent launch (1 program)")
    counter = torch.zeros(1, dtype=torch.int32, device=dev)
    for warps in (4, 16):
        ms = graph_ms(lambda w=warps: _barrier_kernel[(sms,)](counter, N=n, P=sms, num_warps=w))
        print(
            f"barrier: {ms / n * 1e3:.2f} us a grid barrier ({sms} programs, {warps} warps), "
            f"counter {counter.item()} = {counter.item() / (n * sms):.1f} launches of {n} x {sms}"
        )

    H, A, NQKV, INTER = 1024, 2048, 4096, 3072
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, generator=gen) * scale).to(dev, torch.bfloat16)

    layers = [
        {
            "in_norm": 1 + rand(H, scale=0.1),
            "post_norm": 1 + rand(H, scale=0.1),
            "qkv": rand(NQKV, H),
            "o": rand(H, A),
            "gu": rand(2 * INTER, H),
            "down": rand(H, INTER),
        }
        for _ in range(args.layers)
    ]
    x0 = rand(1, H, scale=1.0)

    def via_linear():
        x = x0
        for w in layers:
            qkv = decode_kernels.linear(x, (w["qkv"], None), norm=w["in_norm"], eps=1e-6, pdl=True)
            x = decode_kernels.linear(qkv[:, :A], (w["o"], None), residual=x, pdl=True)
            gu = decode_kernels.linear(x, (w["gu"], None), norm=w["post_norm"], eps=1e-6, pdl=True)
            x = decode_kernels.linear(gu, (w["down"], None), silu=True, residual=x, pdl=True)
        return x

    want = via_linear()
    ms = graph_ms(via_linear)
    print(f"linear: {ms / args.layers * 1e3:.2f} us a layer (4 kernels)")

    counters = torch.zeros(args.layers, dtype=torch.int32, device=dev)
    qkv = torch.empty(NQKV, dtype=torch.bfloat16, device=dev)
    h = torch.empty(H, dtype=torch.bfloat16, device=dev)
    act = torch.empty(INTER, dtype=torch.bfloat16, device=dev)
    bufs = [torch.empty(1, H, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    P = sms
    bn = {
        "BN1": triton.next_power_of_2(triton.cdiv(NQKV, P)),
        "BN2": triton.next_power_of_2(triton.cdiv(H, P)),
        "BN3": triton.next_power_of_2(triton.cdiv(INTER, P)),
        "BN4": triton.next_power_of_2(triton.cdiv(H, P)),
    }
    for name, rows in (("BN1", NQKV), ("BN2", H), ("BN3", INTER), ("BN4", H)):
        assert triton.cdiv(rows, bn[name]) <= P, (name, bn[name])
    for warps in [int(w) for w in args.warps.split(",")]:

        def persistent(warps=warps):
            x = x0
            for i, w in enumerate(layers):
                y = bufs[i % 2]
                _layer_kernel[(P,)](
                    x,
                    y,
                    qkv,
                    h,
                    act,
                    w["in_norm"],
                    w["post_norm"],
                    w["qkv"],
                    w["o"],
                    w["gu"],
                    w["down"],
                    counters[i:],
                    1e-6,
                    P=P,
                    H=H,
                    NQKV=NQKV,
                    A=A,
                    INTER=INTER,
                    **bn,
                    BKH=triton.next_power_of_2(H),
                    BKA=triton.next_power_of_2(A),
                    BKI=triton.next_power_of_2(INTER),
                    num_warps=warps,
                    launch_pdl=True,
                )
                x = y
            return x

        got = persistent()
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        ms = graph_ms(persistent)
        print(
            f"persistent: {ms / args.layers * 1e3:.2f} us a layer ({warps} warps, {bn}), "
            f"error against linear {err:.2e}, "
            f"counter[0] {counters[0].item() / (3 * P):.1f} launches"
        )


if __name__ == "__main__":
    main()
