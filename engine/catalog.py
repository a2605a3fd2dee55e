"""The model catalog: causal-LM folders described from their files, without torch.

Facts come from `config.json`, the safetensors headers (parameter counts from tensor shapes,
no weights read) and `tokenizer.json` (a fingerprint that tells whether two models share a
tokenizer).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import pickletools
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
MAX_PICKLE_BYTES = 256 * 2**20  # a checkpoint's pickle (not its tensor data) is far smaller
# config.json keys that give a model's context length, in the order transformers' configs use
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


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
    context_length: int | None = None  # tokens the model can attend to (config.json)
    problem: str | None = None  # why this folder cannot load (a catalog entry shown as broken)

    def load_dtype(self, on_cpu: bool, draft: bool = False) -> str | None:
        """The dtype this model loads in by default (None: the checkpoint's own).

        Half checkpoints load as float32 on the CPU (its half kernels are slow or missing) and,
        as a small target, on GPUs too: there float32 costs little, and it keeps greedy
        speculative decoding token-for-token equal to target-only decoding, which half
        precision can break on near-ties because a k-token verification and a one-token step
        round differently. A `draft` on a GPU keeps its half dtype: its rounding cannot change
        the output (the target verifies every token), and float32 would double the bytes each
        draft token reads.
        """
        if self.dtype not in HALF_DTYPES:
            return None
        if on_cpu or (not draft and (self.parameters or 0) < FLOAT32_BELOW):
            return "float32"
        return None

    def resident_bytes(self, on_cpu: bool, draft: bool = False) -> int:
        """Weight bytes once loaded in the default dtype (for this role)."""
        widened = self.load_dtype(on_cpu, draft) == "float32" and self.dtype in HALF_DTYPES
        return self.size_bytes * 2 if widened else self.size_bytes

    def weight_bytes_on(self, devices: Sequence[Any], draft: bool = False) -> int:
        """Weight bytes on these devices (`backends.base.Device`s) as the target (or the
        `draft`): the one estimate that the CLI and the dashboard judge a fit by. A simulated
        GPU counts as the GPU it stands for, so that a placement tried on a laptop says
        whether it would fit the real card."""
        on_cpu = bool(devices) and all(getattr(d, "backend", None) == "cpu" for d in devices)
        return self.resident_bytes(on_cpu=on_cpu, draft=draft)

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
            "context_length": self.context_length,
            "problem": self.problem,
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
    parameters, header_dtype = _safetensors_facts(weights)  # cut-short files fail here
    _check_shards_and_pickles(path, weights)
    return ModelInfo(
        name=name or path.name,
        path=path.resolve(),
        architecture=architecture,
        parameters=parameters,
        size_bytes=sum(f.stat().st_size for f in weights),
        dtype=header_dtype or _config_dtype(config),
        tokenizer_fingerprint=tokenizer_fingerprint(path),
        bundled=bundled,
        context_length=_context_length(config),
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
    """Every causal LM found: the bundled pair, the HF cache, then the extra folders.

    A folder that cannot load (damaged weights, an unreadable config) is listed with its
    `problem`; folders of other kinds of model (encoders, ...) are left out.
    """
    found: list[ModelInfo] = []
    for candidate, name, bundled in _candidates(extra_dirs):
        try:
            info = describe_model(candidate, name, bundled)
        except NotACausalLM:
            continue
        except (EngineInputError, OSError) as exc:
            info = broken_model(candidate, name, bundled, exc)
        if all(info.path != seen.path for seen in found):
            found.append(info)
    return found


def broken_model(folder: Path, name: str, bundled: bool, exc: Exception) -> ModelInfo:
    """The catalog entry of a folder that cannot load: what is known, and why not."""
    path = Path(folder).resolve()
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    size = 0
    for file in _weight_files(path) if path.is_dir() else ():
        with contextlib.suppress(OSError):  # a dangling link in a hub snapshot: not counted
            size += file.stat().st_size
    return ModelInfo(
        name=name,
        path=path,
        architecture=None,
        parameters=None,
        size_bytes=size,
        dtype=None,
        tokenizer_fingerprint=None,
        bundled=bundled,
        problem=reason,
    )


def resolve_model(name_or_path: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> ModelInfo:
    """A folder path or a catalog name -> ModelInfo; EngineInputError says why not.

    The model is named by its catalog name where its folder is in the catalog, else by the
    path as given: records and outputs name models the same way whichever way they ran.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        name, bundled = catalog_name(path, extra_dirs) or (name_or_path, False)
        return describe_model(path, name, bundled)
    for info in list_models(extra_dirs):
        if info.name == name_or_path:
            if info.problem:
                raise EngineInputError(info.problem)
            return info
    if _looks_like_path(name_or_path):
        raise EngineInputError(f"model folder {path} does not exist")
    raise EngineInputError(
        f"no model {name_or_path!r}: not a folder and not in the catalog (see `specdeck models`)"
    )


def catalog_name(
    folder: str | os.PathLike, extra_dirs: Iterable[str | os.PathLike] = ()
) -> tuple[str, bool] | None:
    """(catalog name, bundled) of a folder the catalog lists, or None; reads no weights."""
    wanted = Path(folder).expanduser().resolve()
    for candidate, name, bundled in _candidates(extra_dirs):
        if candidate.resolve() == wanted:
            return name, bundled
    return None


def count_prompt_tokens(info: ModelInfo, text: str) -> int | None:
    """Tokens of `text` as the model's tokenizer.json encodes it (special tokens included);
    None without a tokenizer.json. Uses the `tokenizers` library: no torch, no transformers."""
    tokenizer = _tokenizer(info.path / "tokenizer.json")
    return None if tokenizer is None else len(tokenizer.encode(text).ids)


@functools.lru_cache(maxsize=8)
def _tokenizer(file: Path) -> Any:
    if not file.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(file))
    except Exception:  # noqa: BLE001 - the Rust library raises its own exception type
        return None  # a tokenizer.json it cannot read: the prompt is not counted here


def context_problem(
    target: ModelInfo,
    draft: ModelInfo,
    prompt_tokens: int | None,
    max_new_tokens: int,
    k_most: int,
    option: str = "--max-new-tokens",
) -> str | None:
    """Why prompt + max new tokens + k drafted tokens overflow either model's context, or None.

    The target verifies k drafted tokens past what it has, and the draft drafts them, so
    both hold up to prompt + max_new_tokens + k positions.
    """
    prompt = prompt_tokens or 0
    need = prompt + max_new_tokens + k_most
    for role, info in (("target", target), ("draft", draft)):
        limit = info.context_length
        if limit is not None and need > limit:
            room = limit - prompt - k_most
            fix = (
                f"use {option} {room} or less"
                if room >= 1
                else "use a shorter prompt or a model with a longer context"
            )
            return (
                f"the run needs {need} positions ({prompt} prompt + {max_new_tokens} new + "
                f"k {k_most}) but the {role} {info.name} has a context of {limit} tokens; {fix}"
            )
    return None


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


class NotACausalLM(EngineInputError):
    """A model folder of another kind (an encoder, ...): not for the catalog, nor broken."""


def _context_length(config: dict) -> int | None:
    for source in (config, config.get("text_config")):
        if not isinstance(source, dict):
            continue
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _architecture(path: Path, config: dict) -> str | None:
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = []
    causal = [a for a in architectures if isinstance(a, str) and a.endswith(CAUSAL_LM_SUFFIXES)]
    if architectures and not causal:
        raise NotACausalLM(
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
        header_bytes, tensors = _read_header(file)
        try:
            data_end = 0
            for tensor in tensors.values():
                count = math.prod(tensor["shape"])
                total += count
                by_dtype[tensor["dtype"]] += count
                data_end = max(data_end, int(tensor["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError, AttributeError):
            raise EngineInputError(
                f"{file} is not a readable safetensors file: a tensor entry of its header "
                "is malformed"
            ) from None
        need, have = 8 + header_bytes + data_end, file.stat().st_size
        if have < need:
            raise EngineInputError(
                f"{file} is cut short: its header describes {need} bytes but the file has "
                f"{have} (an interrupted download or copy?)"
            )
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else None
    return total, SAFETENSORS_DTYPES.get(dominant, dominant.lower() if dominant else None)


def read_safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor entries (dtype, shape, data_offsets) of a safetensors file."""
    return _read_header(file)[1]


def _read_header(file: Path) -> tuple[int, dict[str, dict]]:
    """(header length in bytes, tensor entries) of a safetensors file."""
    try:
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(fh.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise EngineInputError(f"{file} is not a readable safetensors file: {exc}") from None
    return length, {k: v for k, v in header.items() if k != "__metadata__"}


def check_model_files(folder: str | os.PathLike) -> None:
    """Raise EngineInputError naming the file when a folder's weights cannot load: cut short,
    a shard missing, or a pickle that weights-only loading refuses. Reads no tensor data."""
    path = Path(folder)
    weights = _weight_files(path)
    _safetensors_facts(weights)
    _check_shards_and_pickles(path, weights)


def _check_shards_and_pickles(path: Path, weights: list[Path]) -> None:
    _check_shard_index(path)
    for file in weights:
        if file.suffix == ".bin":
            _check_torch_pickle(file)


def _check_shard_index(path: Path) -> None:
    """Raise EngineInputError when a shard index names a weight file that is not there."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        raise EngineInputError(f"{index} cannot be read as a shard index") from None
    missing = [s for s in shards if not (path / str(s)).is_file()]
    if missing:
        raise EngineInputError(
            f"{path / str(missing[0])} is missing ({len(missing)} of the {len(shards)} shards "
            f"that {index.name} names)"
        )


# what torch.load(weights_only=True) lets a checkpoint's pickle import (torch's
# _weights_only_unpickler), written out here so that the catalog needs no torch
SAFE_PICKLE_GLOBALS = {
    "collections": {"OrderedDict", "Counter"},
    "builtins": {"set", "complex", "bytearray"},
    "_codecs": {"encode"},
    "torch": {"Size", "Tensor", "device"},
    "torch.nn.parameter": {"Parameter"},
    "torch.serialization": {"_get_layout"},
    "torch._tensor": {"_rebuild_from_type_v2"},
    "torch.storage": {"TypedStorage", "UntypedStorage"},
}
TORCH_PICKLE_NAMES = re.compile(
    r"_rebuild_\w+"  # torch._utils' tensor rebuild functions
    r"|\w+(Storage|Tensor)"  # legacy storage and tensor classes
    r"|per_\w+"  # quantization schemes
    r"|b?float\d*\w*|u?int\d*|q?u?int\d+\w*|bits\w+|complex\d*|c?half|c?double|bool|long"
    r"|short|cfloat|chalf"  # dtypes
)
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-zip torch.save file
STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
              "SHORT_BINSTRING"}  # fmt: skip


def _check_torch_pickle(file: Path) -> None:
    """Raise EngineInputError, naming the file, when torch.load(weights_only=True) would
    refuse this checkpoint: a pickle that imports what is not tensor data, or a damaged one.
    Reads the pickle's opcodes only; no torch, no tensor data."""
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not pickles:
                    raise EngineInputError(f"{file} is not a torch checkpoint: no data.pkl in it")
                with archive.open(pickles[0]) as fh:
                    imported = _pickle_globals(fh.read(MAX_PICKLE_BYTES))[0]
        else:
            with file.open("rb") as fh:
                if fh.read(2) == b"PK":
                    raise ValueError("a zip archive whose directory is missing (cut short?)")
                fh.seek(0)
                imported, first = _pickle_globals(fh)
                if first == TORCH_LEGACY_MAGIC:
                    for _ in range(3):  # protocol, system info, then the saved object
                        imported |= _pickle_globals(fh)[0]
                elif not imported - _allowed_globals(imported):
                    raise EngineInputError(
                        f"{file} is not a torch checkpoint (a pickle of something else), "
                        "which loading with weights_only refuses"
                    )
    except EngineInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as exc:
        raise EngineInputError(f"{file} is not a readable torch checkpoint: {exc}") from None
    refused = sorted(imported - _allowed_globals(imported))
    if refused:
        names = ", ".join(f"{m}.{n}" for m, n in refused[:3])
        raise EngineInputError(
            f"{file} is a pickle that imports {names}, which loading with weights_only refuses "
            "(not plain tensor data; save the weights as safetensors)"
        )


def _allowed_globals(imported: set[tuple[str, str]]) -> set[tuple[str, str]]:
    allowed = set()
    for module, name in imported:
        plain = "builtins" if module == "__builtin__" else module
        if name in SAFE_PICKLE_GLOBALS.get(plain, ()) or (
            plain in ("torch", "torch._utils", "torch.cuda") and TORCH_PICKLE_NAMES.fullmatch(name)
        ):
            allowed.add((module, name))
    return allowed


def _pickle_globals(source: Any) -> tuple[set[tuple[str, str]], Any]:
    """(module, name) of each global one pickle imports, and the first number it pushes (all
    that a legacy torch.save file's first pickle holds is its magic number).

    `source` is bytes or a binary file positioned at the pickle (left just after its STOP).
    """
    imported: set[tuple[str, str]] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # the last values pushed, where they are strings (else None)
    first_number = None
    ops = 0
    for opcode, arg, _ in pickletools.genops(source):
        ops += 1
        name = opcode.name
        value = None
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            imported.add((module, attr))
        elif name == "STACK_GLOBAL":
            module, attr = pushed[-2:] if len(pushed) >= 2 else [None, None]
            imported.add((str(module or "?"), str(attr or "?")))
        elif name in STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = pushed[-1] if pushed else None
            continue
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo.get(int(arg))
        elif name in ("LONG1", "LONG4", "INT", "LONG", "BININT", "BININT1", "BININT2") and ops == 2:
            first_number = arg  # the value right after PROTO
        pushed = [*pushed[-1:], value]
    return imported, first_number


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
