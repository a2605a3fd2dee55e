"""What a bench writes: table rows, bench.md, bench.png and bench.json."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    ("placement", "placement"),
    ("draft", "draft side"),
    ("target", "target side"),
    ("mode", "mode"),
    ("models", "model pair"),
    ("mean_al", "mean AL"),
    ("acceptance", "accept %"),
    ("tokens_per_s", "decode tok/s"),
    ("target_only_tokens_per_s", "target-only tok/s"),
    ("speedup", "speedup"),
    ("identical", "greedy = target-only"),
)


def table_rows(placements: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per placement and per peer, values raw (None = not measured)."""
    rows: list[dict[str, Any]] = []
    for p in placements:
        simulated = set(p.get("simulated_devices", ()))
        common = {
            "placement": p["name"],
            "draft": _marked(p["placement"]["draft"], simulated),
            "target": ",".join(_marked(i, simulated) for i in p["placement"]["target"]),
            "models": f"{p['target_model']} <- {p['draft_model']}",
        }
        result = p.get("result")
        base = (result or {}).get("baseline") or {}
        rows.append(
            {
                **common,
                "mode": p["mode"],
                "mean_al": result and result["mean_acceptance_length"],
                "acceptance": result and result["acceptance_rate"],
                "tokens_per_s": result and result["decode_tokens_per_s"],
                "target_only_tokens_per_s": base.get("decode_tokens_per_s"),
                "speedup": result and result["speedup"],
                "identical": result and result["identical_to_baseline"],
                "error": p.get("error"),
            }
        )
        for name, peer in (p.get("peers") or {}).items():
            rows.append(
                {
                    **common,
                    "mode": f"{name} assisted",
                    "mean_al": peer.get("mean_acceptance_length"),
                    "acceptance": None,  # transformers does not expose drafted/accepted
                    "tokens_per_s": peer.get("decode_tokens_per_s"),
                    "target_only_tokens_per_s": base.get("decode_tokens_per_s"),
                    "speedup": peer.get("speedup"),
                    "identical": peer.get("identical_to_baseline"),
                    "error": peer.get("error"),
                }
            )
    return rows


def _marked(device_id: str, simulated: set[str]) -> str:
    return f"{device_id} (simulated)" if device_id in simulated else device_id


def cell(key: str, value: Any) -> str:
    """A row value as the table and markdown show it."""
    if value is None:
        return "n/a"
    if key == "acceptance":
        return f"{value:.1%}"
    if key in ("tokens_per_s", "target_only_tokens_per_s"):
        return f"{value:.1f}"
    if key == "mean_al":
        return f"{value:.2f}"
    if key == "speedup":
        return f"{value:.2f}x"
    if key == "identical":
        return "yes" if value else "NO"
    return str(value)


def markdown(document: Mapping[str, Any]) -> str:
    """bench.md: the settings, then the table (failed rows say why)."""
    s = document["settings"]
    lines = [
        f"# specdeck bench {document['bench_id']}",
        "",
        f"- host: {document['host']}, {document['time']}",
        f"- suite: {document['suite']}, {len(document['prompts'])} prompts "
        f"({', '.join(p['id'] for p in document['prompts'][:12])}"
        f"{', ...' if len(document['prompts']) > 12 else ''})",
        f"- k={s['k']}, temperature={s['temperature']}, seed={s['seed']}, "
        f"max_new_tokens={s['max_new_tokens']}, warm-up {s['warmup_tokens']} tokens",
        "- AL = committed / steps over all prompts; tok/s = decode tokens / decode time",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for row in document["rows"]:
        values = [cell(key, row.get(key)) for key, _ in COLUMNS]
        if row.get("error"):
            values[5] = f"failed: {row['error']}"
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines) + "\n"


def write_chart(document: Mapping[str, Any], path: Path) -> str | None:
    """bench.png: decode tokens/s and mean AL per placement; a one-line reason if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install 'specdeck[bench]')"
    rows = document["rows"]
    labels = [f"{r['placement']}\n{r['mode']}" for r in rows]
    fig, (tps_ax, al_ax) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4.5))
    xs = range(len(rows))
    tps = [r["tokens_per_s"] or 0.0 for r in rows]
    base = [r["target_only_tokens_per_s"] or 0.0 for r in rows]
    width = 0.4
    tps_ax.bar([x - width / 2 for x in xs], tps, width, label="decode")
    tps_ax.bar([x + width / 2 for x in xs], base, width, label="target only")
    tps_ax.set_title("decode tokens/s")
    tps_ax.legend()
    al_ax.bar(list(xs), [r["mean_al"] or 0.0 for r in rows], 0.6, color="tab:green")
    al_ax.set_title("mean acceptance length")
    for ax in (tps_ax, al_ax):
        ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_outputs(document: dict[str, Any], out_dir: Path, chart: bool = True) -> list[str]:
    """bench.json, bench.md (and bench.png) in out_dir; the notes to show (a skipped chart)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "bench.json", json.dumps(document, indent=2) + "\n")
    _write(out_dir / "bench.md", markdown(document))
    note = write_chart(document, out_dir / "bench.png") if chart else None
    return [note] if note else []


def _write(path: Path, text: str) -> None:
    """Replace a file whole, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
