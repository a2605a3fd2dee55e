"""One target decode step against the time to read the target's weights once from GPU memory.

    python3 benchmarks/decode_step.py --model /tmp/qwen3-8b-random --device cuda:0 [--json]

The gap between the two is the next performance target: a decode step of a large model at
batch 1 is bound by reading the weights, so anything above that time is overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure_bandwidth(torch, device: str, gib: float = 4.0, repeats: int = 10) -> float:
    """Achieved device-memory bandwidth in bytes/s from large on-device copies (read+write)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    del src, dst
    return 2 * n * 2 * repeats / elapsed  # each copy reads and writes n bf16 values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--context", type=int, default=128, help="prompt tokens before decoding")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto").to(args.device).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(2, model.config.vocab_size, (1, args.context), device=args.device)
    times = []
    with torch.inference_mode():
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(args.steps + 5):
            torch.cuda.synchronize(args.device)
            start = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize(args.device)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times[5:])
    bandwidth = measure_bandwidth(torch, args.device)
    read_s = weight_bytes / bandwidth
    result = {
        "gpu": torch.cuda.get_device_name(args.device),
        "torch": torch.__version__,
        "model": args.model,
        "weight_bytes": weight_bytes,
        "decode_step_ms": step_s * 1e3,
        "measured_bandwidth_gb_s": bandwidth / 1e9,
        "weight_read_ms": read_s * 1e3,
        "step_over_read": step_s / read_s,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
