"""Where a graph-path decode step's time goes: the kernels of one replay, by total time.

    python3 benchmarks/decode_profile.py --shape qwen3-0.6b [--capacity 512] [--kernels K]

Prints torch.profiler's kernel table for the draft burst of one token (or the target's
step with --target) and times decode attention over the preallocated cache two ways
(SDPA with a mask, and baddbmm/softmax/bmm) at the given capacity. `--kernels` picks the
graph path's kernel set (`SPECDECK_DECODE_KERNELS`: auto, triton-gemv, triton, torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def attention_variants(torch, capacity: int, kv: int = 8, groups: int = 4, d: int = 128) -> None:
    import torch.nn.functional as F

    q = torch.randn(1, kv, groups, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kv, capacity, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = torch.zeros(groups, capacity, device="cuda", dtype=torch.bfloat16)
    mask[:, capacity // 2 :] = -torch.inf

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def matmuls():
        scores = torch.baddbmm(mask, q[0], k[0].transpose(1, 2), alpha=d**-0.5)
        return torch.bmm(torch.softmax(scores.float(), -1).to(v.dtype), v[0])

    for name, fn in (("sdpa", sdpa), ("matmuls", matmuls)):
        for _ in range(3):
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(100):
                fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        print(f"attention {name} capacity {capacity}: {start.elapsed_time(end) * 10:.2f} us")


def kernel_profile(torch, run, replays: int = 10, rows: int = 0) -> dict:
    """Kernels one call of `run` launches and their summed device time (torch.profiler),
    and with `rows` the top rows of its kernel table by total time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            run()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    total = sum(getattr(e, "device_time", 0.0) for e in kernels) / replays
    out = {"kernels": len(kernels) / replays, "kernel_us": total}
    if rows:
        out["table"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--capacity", type=int, default=512)
    parser.add_argument("--target", action="store_true", help="profile the one-token step")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--kernels", default=None, help="SPECDECK_DECODE_KERNELS for this run")
    args = parser.parse_args()
    if args.kernels:
        import os

        os.environ["SPECDECK_DECODE_KERNELS"] = args.kernels

    import torch
    from decode_floor import make_model

    from engine.graph_decoder import GREEDY, GraphDecoder

    attention_variants(torch, args.capacity)
    model = make_model(torch, args.shape, None, "cuda:0")
    decoder = GraphDecoder(model)
    print(f"kernels: {decoder.kernels} ({decoder.kernels_reason}), pdl: {decoder.pdl}")
    prompt = list(range(11, 139))
    with torch.inference_mode():
        if args.target:
            decoder.prepare(args.capacity - 32, steps=True, mode=GREEDY)
            decoder.begin(0.0, 0)
            decoder.start_target(prompt)

            def run():
                decoder.run("step", 1, GREEDY)
        else:
            decoder.prepare(args.capacity - 32, burst_ks=[1], mode=GREEDY)
            decoder.begin(0.0, 0)
            decoder.start_draft(prompt)

            def run():
                decoder.run("burst", 1, GREEDY)

        found = kernel_profile(torch, run, rows=args.rows)
    print(found["table"])
    print(f"{found['kernels']:.0f} kernels a replay, {found['kernel_us']:.0f} us of kernel time")


if __name__ == "__main__":
    main()
