"""Long prompts on the graph path at real size, through `specdeck run`.

    python3 benchmarks/long_prompt.py --out F.json [--lengths 512,2048,6000]

A Qwen3-8B-shaped target and a Qwen3-0.6B-shaped draft (random weights, bf16, one GPU,
in-process, k = 5, `--baseline`), with word prompts of each length (one token a word).
Per length: the prefill's seconds, decode tokens/s, capture seconds, both roles' decode
paths, and whether the speculative output equals target-only decoding token for token.
The JSON is rewritten after every run, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_floor import make_model, run_summary, specdeck, word_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lengths", default="512,2048,6000", help="prompt tokens, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "decode-floor")
    parser.add_argument("--timeout-s", type=float, default=150.0, help="each run's limit")
    args = parser.parse_args()

    import torch

    props = torch.cuda.get_device_properties(0)
    doc: dict = {
        "machine": f"one {props.name} ({props.total_memory / 2**30:.0f} GiB)",
        "torch": torch.__version__,
        "new_tokens": args.new_tokens,
        "k": 5,
        "runs": {},
    }
    folders = {"qwen3-8b": args.work / "qwen3-8b", "qwen3-0.6b": args.work / "qwen3-0.6b"}
    start = time.perf_counter()
    for shape, folder in folders.items():
        if not (folder / "config.json").exists():
            model = make_model(torch, shape, folder, "cuda:0")
            del model
            torch.cuda.empty_cache()
    doc["models_s"] = time.perf_counter() - start
    for length in (int(n) for n in args.lengths.split(",")):
        argv = [
            "run",
            "--target-model",
            str(folders["qwen3-8b"]),
            "--draft-model",
            str(folders["qwen3-0.6b"]),
            "--target",
            "cuda:0",
            "--draft",
            "cuda:0",
            "--mode",
            "inprocess",
            "--prompt",
            word_prompt(length),
            "--max-new-tokens",
            str(args.new_tokens),
            "--k",
            "5",
            "--baseline",
        ]
        result = specdeck(argv, args.timeout_s)
        doc["runs"][str(length)] = {
            "prompt_tokens": result.get("prompt_tokens"),
            "prefill_s": result.get("prefill_s"),
            **run_summary(result),
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps({length: doc["runs"][str(length)]}, default=str)[:600], flush=True)


if __name__ == "__main__":
    main()
