"""The model catalog: causal-LM folders described from their files, without torch.

Facts come from `config.json`, the safetensors headers (parameter counts from tensor shapes,
no weights read) and `tokenizer.json` (a fingerprint that tells whether two models share a
tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineInputError

DEMO_DIR = Path(__file__).resolve().parent / "demo_models"
DEMO_NAMES = {"target": "demo-target", "draft": "demo-draft"}

# architectures AutoModelForCausalLM can load end in one of these
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
SAFETENSORS_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I8": "int8",
    "U8": "uint8",
    "I32": "int32",
    "I64": "int64",
}
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not one


HALF_DTYPES = ("bfloat16", "float16")
FLOAT32_BELOW = 1_000_000_000  # parameters under which a half checkpoint loads as float32


@dataclass(frozen=True)
class ModelInfo:
    """What the catalog knows about one model folder."""

    name: str
    path: Path
    architecture: str | None
    parameters: int | None  # from safetensors headers; None for .bin-only checkpoints
    size_bytes: int  # weight files on disk
    dtype: str | None  # the checkpoint's dominant tensor dtype, torch spelling
    tokenizer_fingerprint: str | None  # short sha256 of vocab, merges and special tokens
    bundled: bool = False

    def load_dtype(self, on_cpu: bool) -> str | None:
        """The dtype this model loads in by default (None: the checkpoint's own).

        Half checkpoints load as float32 on the CPU (its half kernels are slow or missing) and,
        when small, on GPUs too: there float32 costs little, and it keeps greedy speculative
        decoding token-for-token equal to target-only decoding, which half precision can break
        on near-ties because a k-token verification and a one-token step round differently.
        """
        if self.dtype in HALF_DTYPES and (on_cpu or (self.parameters or 0) < FLOAT32_BELOW):
            return "float32"
        return None

    def resident_bytes(self, on_cpu: bool) -> int:
        """Weight bytes once loaded in the default dtype."""
        widened = self.load_dtype(on_cpu) == "float32" and self.dtype in HALF_DTYPES
        return self.size_bytes * 2 if widened else self.size_bytes

    def as_json(self) -> dict:
        """The `specdeck models --json` entry."""
        return {
            "name": self.name,
            "path": str(self.path),
            "architecture": self.architecture,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "dtype": self.dtype,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "bundled": self.bundled,
        }


def describe_model(
    folder: str | os.PathLike, name: str | None = None, bundled: bool = False
) -> ModelInfo:
    """Read a model folder; raise EngineInputError when it is missing or not a causal LM."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise EngineInputError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise EngineInputError(f"{path} is not a model folder (it is a file)")
    config = _read_config(path)
    architecture = _architecture(path, config)
    weights = _weight_files(path)
    if not weights:
        raise EngineInputError(f"{path} is not a model folder: no *.safetensors or *.bin weights")
    parameters, header_dtype = _safetensors_facts(weights)
    return ModelInfo(
        name=name or path.name,
        path=path.resolve(),
        architecture=architecture,
        parameters=parameters,
        size_bytes=sum(f.stat().st_size for f in weights),
        dtype=header_dtype or _config_dtype(config),
        tokenizer_fingerprint=tokenizer_fingerprint(path),
        bundled=bundled,
    )


def demo_pair() -> tuple[ModelInfo, ModelInfo]:
    """The bundled demo (target, draft); EngineInputError when the package lacks them."""
    folders = {role: DEMO_DIR / role for role in ("target", "draft")}
    missing = [str(f) for f in folders.values() if not (f / "config.json").exists()]
    if missing:
        raise EngineInputError(
            f"the bundled demo model pair is missing ({', '.join(missing)}); "
            "pass --target-model and --draft-model"
        )
    return (
        describe_model(folders["target"], DEMO_NAMES["target"], bundled=True),
        describe_model(folders["draft"], DEMO_NAMES["draft"], bundled=True),
    )


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, honouring HF_HUB_CACHE and HF_HOME."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def list_models(extra_dirs: Iterable[str | os.PathLike] = ()) -> list[ModelInfo]:
    """Every causal LM found: the bundled pair, the HF cache, then the extra folders."""
    found: list[ModelInfo] = []
    for candidate, name, bundled in _candidates(extra_dirs):
        try:
            info = describe_model(candidate, name, bundled)
        except (EngineInputError, OSError):
            continue  # the catalog shows what can load; resolve_model explains the rest
        if all(info.path != seen.path for seen in found):
            found.append(info)
    return found


def resolve_model(name_or_path: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> ModelInfo:
    """A folder path or a catalog name -> ModelInfo; EngineInputError says why not."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return describe_model(path)
    for info in list_models(extra_dirs):
        if info.name == name_or_path:
            return info
    if _looks_like_path(name_or_path):
        raise EngineInputError(f"model folder {path} does not exist")
    raise EngineInputError(
        f"no model {name_or_path!r}: not a folder and not in the catalog (see `specdeck models`)"
    )


def check_same_tokenizer(target: ModelInfo, draft: ModelInfo) -> None:
    """Raise EngineInputError when the two models' tokenizers differ."""
    a, b = target.tokenizer_fingerprint, draft.tokenizer_fingerprint
    if a is None or b is None:
        which = target if a is None else draft
        raise EngineInputError(
            f"cannot tell whether {target.name} and {draft.name} share a tokenizer: "
            f"{which.path} has no tokenizer.json, vocab.json or tokenizer.model"
        )
    if a != b:
        raise EngineInputError(
            f"the target {target.name} (tokenizer {a}) and the draft {draft.name} "
            f"(tokenizer {b}) use different tokenizers; speculative decoding needs one tokenizer"
        )


def tokenizer_fingerprint(folder: Path) -> str | None:
    """Short sha256 of the normalized vocabulary, merges and special tokens, or None."""
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        try:
            data = json.loads(tok_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        model = data.get("model") or {}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            vocab = sorted(vocab.items(), key=lambda kv: kv[1])
        added = sorted(
            (t.get("id"), t.get("content"), bool(t.get("special")))
            for t in data.get("added_tokens") or []
        )
        canonical = {"type": model.get("type"), "vocab": vocab, "merges": merges, "added": added}
        return _short_hash(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode())
    vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
    if vocab_json.is_file():
        parts = [vocab_json.read_bytes(), merges_txt.read_bytes() if merges_txt.is_file() else b""]
        return _short_hash(b"\0".join(parts))
    sentencepiece = folder / "tokenizer.model"
    if sentencepiece.is_file():
        return _short_hash(sentencepiece.read_bytes())
    return None


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise EngineInputError(f"{path} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineInputError(f"{config_file} cannot be read as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise EngineInputError(f"{config_file} is not a model config (not a JSON object)")
    return config


def _architecture(path: Path, config: dict) -> str | None:
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = []
    causal = [a for a in architectures if isinstance(a, str) and a.endswith(CAUSAL_LM_SUFFIXES)]
    if architectures and not causal:
        raise EngineInputError(
            f"{path} is not a causal language model ({', '.join(map(str, architectures))}); "
            "speculative decoding needs a *ForCausalLM model"
        )
    if not architectures and not config.get("model_type"):
        raise EngineInputError(f"{path} is not a model folder: config.json names no model type")
    return causal[0] if causal else config.get("model_type")


def _weight_files(path: Path) -> list[Path]:
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    return sorted({f for pattern in WEIGHT_PATTERNS[1:] for f in path.glob(pattern)})


def _safetensors_facts(weights: list[Path]) -> tuple[int | None, str | None]:
    """(parameter count, dominant dtype) from safetensors headers; (None, None) otherwise."""
    files = [w for w in weights if w.suffix == ".safetensors"]
    if not files:
        return None, None
    total = 0
    by_dtype: Counter[str] = Counter()
    for file in files:
        for tensor in read_safetensors_header(file).values():
            count = math.prod(tensor["shape"])
            total += count
            by_dtype[tensor["dtype"]] += count
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else None
    return total, SAFETENSORS_DTYPES.get(dominant, dominant.lower() if dominant else None)


def read_safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor entries (dtype, shape, data_offsets) of a safetensors file."""
    try:
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(fh.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise EngineInputError(f"{file} is not a readable safetensors file: {exc}") from None
    return {k: v for k, v in header.items() if k != "__metadata__"}


def _config_dtype(config: dict) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    return value if isinstance(value, str) else None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "~", "/")) or os.sep in text and text.count("/") != 1


def _candidates(extra_dirs: Iterable[str | os.PathLike]) -> Iterable[tuple[Path, str, bool]]:
    """(folder, name, bundled) for every place the catalog looks."""
    for role, name in DEMO_NAMES.items():
        if (DEMO_DIR / role / "config.json").exists():
            yield DEMO_DIR / role, name, True
    hub = hf_hub_cache()
    if hub.is_dir():
        for repo in sorted(hub.glob("models--*")):
            snapshot = _current_snapshot(repo)
            if snapshot is not None:
                yield snapshot, repo.name[len("models--") :].replace("--", "/"), False
    for extra in extra_dirs:
        root = Path(extra).expanduser()
        if (root / "config.json").is_file():
            yield root, root.name, False
        elif root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / "config.json").is_file():
                    yield child, child.name, False


def _current_snapshot(repo: Path) -> Path | None:
    """The snapshot refs/main points at, else the newest one."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text(encoding="utf-8").strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = [s for s in (repo / "snapshots").glob("*") if s.is_dir()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None
