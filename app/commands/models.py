"""`specdeck models`: the model catalog (bundled pair, Hugging Face cache, extra folders)."""

from __future__ import annotations

import argparse
import json

from app.config import load_config
from engine.catalog import ModelInfo, hf_hub_cache, list_models


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    extra_dirs = [*config.model_dirs, *getattr(args, "models_dir", [])]
    models = list_models(extra_dirs)
    if args.json:  # a folder that cannot load has a `problem`: the reason, one line
        print(json.dumps({"models": [m.as_json() for m in models]}, indent=2))
        return 0
    if not models:
        places = [f"the Hugging Face cache ({hf_hub_cache()})", *map(str, extra_dirs)]
        print(f"no models found; looked in {', '.join(places)}")
        return 0
    print(format_table(models))
    return 0


def format_table(models: list[ModelInfo]) -> str:
    """One aligned line per model; a folder that cannot load says BROKEN, and why below it."""
    header = ("NAME", "ARCHITECTURE", "PARAMS", "SIZE", "DTYPE", "TOKENIZER", "PATH")
    rows = [header] + [
        (
            m.name + (" (bundled)" if m.bundled else ""),
            "BROKEN" if m.problem else m.architecture or "n/a",
            human_count(m.parameters),
            human_bytes(m.size_bytes),
            m.dtype or "n/a",
            m.tokenizer_fingerprint or "n/a",
            str(m.path),
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row, model in zip(rows, [None, *models], strict=True):
        cells = "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
        lines.append(f"{cells}  {row[-1]}")
        if model is not None and model.problem:
            lines.append(f"  cannot load: {model.problem}")
    return "\n".join(lines)


def human_count(n: int | None) -> str:
    """1234567 -> 1.2M."""
    if n is None:
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """Bytes in binary units."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
