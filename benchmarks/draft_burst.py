"""The graph path's kernel sets side by side: the draft's burst, the target's step and verify.

    python3 benchmarks/draft_burst.py --out DIR [--sets triton,gemv+pdl] [--sweep]

On one GPU, bf16, the Qwen3-0.6B-shaped draft and Qwen3-8B-shaped target of
`make_random_model.py` (random weights), for each kernel set: the draft's k-token burst
(k = 1, 2, 5), the target's one-token step and its (k+1)-token verification (k = 1, 4),
each the median of CUDA-event-timed replays at a fixed context, plus the kernels a replay
launches and their summed time (torch.profiler) for the draft's one-token burst and
the target's step. A kernel set is `SPECDECK_DECODE_KERNELS` (triton: fused small kernels,
cuBLAS products; gemv: products in Triton too for the draft's bursts, `triton-gemv`), with
or without programmatic dependent launch (`+pdl`; `SPECDECK_DECODE_PDL`). Greedy
target-only outputs of each set are compared with the first set's, and the speculative
pair's (k = 5) with its own target-only output.
`--sweep` also times the draft's k = 5 burst at each product setting of `decode_kernels`
(GEMV_TILE, GEMV_WARPS, GEMV_PROGRAMS_PER_SM), then measures a "best"
set with the fastest.
Writes DIR/draft_burst.json; prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROMPT = [11 + 37 * i % 5000 for i in range(128)]
BURST_KS = (1, 2, 5)
VERIFY_KS = (1, 4)
REPLAYS = 30
SETS = {  # SPECDECK_DECODE_KERNELS, SPECDECK_DECODE_PDL
    "triton": ("triton", "0"),  # the path before these sets
    "triton+pdl": ("triton", "1"),
    "gemv": ("triton-gemv", "0"),
    "gemv+pdl": ("triton-gemv", "1"),  # the default
}


def median_ms(torch, fn, repeats: int = REPLAYS) -> float:
    from decode_floor import event_times

    fn()
    return statistics.median(event_times(torch, fn, repeats))


def measure_set(torch, name: str, target, draft, tokens: int, new: int) -> dict:
    from decode_floor import fixed_context
    from decode_profile import kernel_profile

    from engine.graph_decoder import GREEDY, GraphDecoder
    from engine.loading import LoadedModel
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder, target_only

    kernels, pdl = SETS[name]
    os.environ["SPECDECK_DECODE_KERNELS"] = kernels
    os.environ["SPECDECK_DECODE_PDL"] = pdl
    row: dict = {"set": name}
    start = time.perf_counter()
    dg = GraphDecoder(draft)
    tg = GraphDecoder(target)
    row["checks_s"] = time.perf_counter() - start
    row["kernels"] = {"draft": dg.kernels, "target": tg.kernels, "pdl": tg.pdl}
    row["reasons"] = {"draft": dg.kernels_reason, "target": tg.kernels_reason}
    start = time.perf_counter()
    dg.prepare(tokens, burst_ks=BURST_KS, mode=GREEDY)
    row["draft_capture_s"] = time.perf_counter() - start
    row["burst_products"] = {"triton": dg.burst_products, "ms": dg.burst_products_ms}
    start = time.perf_counter()
    tg.prepare(tokens, steps=True, verify_ks=VERIFY_KS, mode=GREEDY)
    row["target_capture_s"] = time.perf_counter() - start

    dg.begin(0.0, 0)
    dg.start_draft(PROMPT)
    row["draft_burst_ms"] = {
        str(k): median_ms(torch, lambda k=k: dg.run("burst", k, GREEDY)) for k in BURST_KS
    }
    row["draft_profile"] = kernel_profile(torch, lambda: dg.run("burst", 1, GREEDY), rows=12)

    at_context = fixed_context(torch, tg, PROMPT)
    row["target_step_ms"] = median_ms(torch, at_context(lambda: tg.run("step", 1, GREEDY)))
    row["verify_ms"] = {}
    for k in VERIFY_KS:
        tg.load_drafts(torch.randint(2, 5000, (k,)))
        row["verify_ms"][str(k)] = median_ms(
            torch, at_context(lambda k=k: tg.run("verify", k, GREEDY))
        )
    row["target_profile"] = kernel_profile(
        torch, at_context(lambda: tg.run("step", 1, GREEDY)), rows=12
    )

    loaded = LoadedModel(model=target, tokenizer=None, info=None, devices=("cuda:0",))
    small = LoadedModel(model=draft, tokenizer=None, info=None, devices=("cuda:0",))
    base = target_only(loaded, PROMPT, new, 0.0, 0, target_decoder=tg)
    row["target_only_ids"] = base.output_ids
    drafter = LocalDrafter(small, graphs=True)
    pair = SpeculativeDecoder(loaded, drafter, 5, 0.0, 0, target_decoder=tg)
    pair.generate(PROMPT, 16)
    result = pair.generate(PROMPT, new)
    steps = result.steps
    row["pair"] = {
        "draft_path": drafter.decode_path,
        "draft_triton_products": drafter.graph.burst_products if drafter.graph else None,
        "exact_vs_target_only": result.output_ids == base.output_ids,
        "draft_ms": statistics.mean(s.draft_s for s in steps) * 1e3,
        "verify_ms": statistics.mean(s.verify_s for s in steps) * 1e3,
        "mean_acceptance_length": result.stats.mean_acceptance_length,
    }
    return row


KNOBS = ("GEMV_TILE", "GEMV_WARPS", "GEMV_PROGRAMS_PER_SM")
SWEEP = [
    (16384, 0, 2),  # the settings before 2026-12-02
    *((16384, warps, programs) for warps in (2, 4, 8) for programs in (1, 2)),
    (8192, 4, 1),
    (32768, 4, 1),
]


def set_knobs(values) -> None:
    from engine import decode_kernels

    for name, value in zip(KNOBS, values, strict=True):
        setattr(decode_kernels, name, value)


def knob_sweep(torch, draft, tokens: int) -> list[dict]:
    """The draft's k = 5 burst through Triton products (with PDL) at each product setting
    of `decode_kernels` (register tile, warps, programs a multiprocessor)."""
    from engine.graph_decoder import GREEDY, GraphDecoder

    os.environ["SPECDECK_DECODE_KERNELS"] = "triton-gemv"
    os.environ["SPECDECK_DECODE_PDL"] = "1"
    dg = GraphDecoder(draft)
    dg.burst_products = True
    out = []
    for values in SWEEP:
        set_knobs(values)
        dg._drop_programs()
        dg.prepare(tokens, burst_ks=[5], mode=GREEDY)
        dg.begin(0.0, 0)
        dg.start_draft(PROMPT)
        ms = median_ms(torch, lambda: dg.run("burst", 5, GREEDY), 20)
        out.append({**dict(zip(KNOBS, values, strict=True)), "burst5_ms": ms})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument(
        "--sweep", action="store_true", help="sweep the product settings, then a 'best' set"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch
    from decode_floor import make_model

    torch.set_grad_enabled(False)
    doc: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        import triton

        doc["triton"] = triton.__version__
    except ImportError:
        doc["triton"] = None
    start = time.perf_counter()
    target = make_model(torch, "qwen3-8b", None, "cuda:0")
    draft = make_model(torch, "qwen3-0.6b", None, "cuda:0")
    doc["models_s"] = time.perf_counter() - start
    tokens = len(PROMPT) + args.new_tokens + 3 * 9
    doc["rows"] = []
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "draft_burst.json"
    for name in args.sets.split(","):
        try:
            with torch.inference_mode():
                doc["rows"].append(measure_set(torch, name, target, draft, tokens, args.new_tokens))
        except Exception as exc:  # noqa: BLE001 - one failing set is a finding, not the end
            doc["rows"].append({"set": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        gc.collect()
        torch.cuda.empty_cache()
        path.write_text(json.dumps(doc, indent=1) + "\n")
    if args.sweep:
        from engine import decode_kernels

        defaults = [getattr(decode_kernels, name) for name in KNOBS]
        with torch.inference_mode():
            doc["sweep"] = knob_sweep(torch, draft, tokens)
        best = min(doc["sweep"], key=lambda row: row["burst5_ms"])
        doc["best_knobs"] = {name: best[name] for name in KNOBS}
        set_knobs([best[name] for name in KNOBS])
        path.write_text(json.dumps(doc, indent=1) + "\n")
        gc.collect()
        with torch.inference_mode():
            row = measure_set(torch, "gemv+pdl", target, draft, tokens, args.new_tokens)
        row["set"] = "best"
        doc["rows"].append(row)
        set_knobs(defaults)
    first = next((r for r in doc["rows"] if "target_only_ids" in r), None)
    for row in doc["rows"]:
        if "target_only_ids" in row and first is not None:
            row["target_only_same_as_first_set"] = (
                row["target_only_ids"] == first["target_only_ids"]
            )
    path.write_text(json.dumps(doc, indent=1) + "\n")
    for row in doc["rows"]:
        for role in ("draft_profile", "target_profile"):
            if role in row:
                print(f"{row['set']} {role}:\n{row[role].pop('table')}")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        f"{'set':<12}{'burst1':>8}{'burst2':>8}{'burst5':>8}{'b5/step':>8}{'step':>7}"
        f"{'ver1':>7}{'ver4':>7}{'dk/fw':>7}{'dus':>6}{'tk/st':>7}{'tus':>6}{'pair=':>6}{'tgt=':>5}"
    )
    for row in doc["rows"]:
        if "error" in row:
            print(f"{row['set']:<12} error: {row['error'][:300]}")
            continue
        b, step = row["draft_burst_ms"], row["target_step_ms"]
        print(
            f"{row['set']:<12}{b['1']:8.3f}{b['2']:8.3f}{b['5']:8.3f}{b['5'] / step:8.3f}"
            f"{step:7.3f}{row['verify_ms']['1']:7.3f}{row['verify_ms']['4']:7.3f}"
            f"{row['draft_profile']['kernels']:7.0f}{row['draft_profile']['kernel_us']:6.0f}"
            f"{row['target_profile']['kernels']:7.0f}{row['target_profile']['kernel_us']:6.0f}"
            f"{row['pair']['exact_vs_target_only']!s:>6}"
            f"{row.get('target_only_same_as_first_set')!s:>5}"
        )
    for row in sorted(doc.get("sweep", []), key=lambda row: row["burst5_ms"])[:8]:
        print("sweep", row)
    if "best_knobs" in doc:
        print("best", doc["best_knobs"])


if __name__ == "__main__":
    main()
