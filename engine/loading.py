"""Loading a catalog model with transformers onto one device or a layer split of several."""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from engine.catalog import ModelInfo, check_model_files
from engine.errors import EngineInputError

# what transformers raises for a folder it cannot load (bad config, refused remote code, ...)
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, EOFError)


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for inference, with its tokenizer and the torch devices it spans."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers tokenizer, or None for models built in tests
    info: ModelInfo | None
    devices: tuple[str, ...]  # torch device names; the first holds the embeddings
    _takes_logits_to_keep: bool = field(init=False, repr=False, compare=False)
    _cache_kwarg: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        params = inspect.signature(self.model.forward).parameters
        object.__setattr__(self, "_takes_logits_to_keep", "logits_to_keep" in params)
        # transformers 5.2x renamed past_key_values to cache; 5.17 knows only the old name
        cache_kwarg = "cache" if "cache" in params else "past_key_values"
        object.__setattr__(self, "_cache_kwarg", cache_kwarg)

    @property
    def input_device(self) -> torch.device:
        """Where input ids go: the device of the embeddings."""
        return torch.device(self.devices[0])

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end generation."""
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                return frozenset([eos] if isinstance(eos, int) else eos)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return frozenset() if eos is None else frozenset([eos])

    def forward(self, input_ids: torch.Tensor, cache: Any, last_only: bool = False):
        """One forward over new tokens (1 x n) after `cache`; returns (logits[n or 1, V], cache)."""
        kwargs: dict[str, Any] = {self._cache_kwarg: cache, "use_cache": True}
        if last_only and self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1  # a long prompt's full logits would not fit
        out = self.model(input_ids=input_ids.to(self.input_device), **kwargs)
        logits = out.logits[0]
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return (logits[-1:] if last_only else logits), new_cache

    def synchronize(self) -> None:
        """Wait for queued GPU work so that a clock reading means something."""
        for name in self.devices:
            device = torch.device(name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    def close(self) -> None:
        """Drop the weights from GPU memory."""
        if any(torch.device(d).type == "cuda" for d in self.devices):
            torch.cuda.empty_cache()


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on a user's terminal."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def torch_build_vendor() -> str:
    """The GPU vendor this torch was built for: 'cuda', 'hip' or 'cpu'."""
    if getattr(torch.version, "hip", None):
        return "hip"
    if getattr(torch.version, "cuda", None):
        return "cuda"
    return "cpu"


def cuda_torch_index(index: int, uuid: str | None) -> int:
    """torch's index for the NVML GPU `index`; by UUID where CUDA_VISIBLE_DEVICES renumbers."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or torch_build_vendor() != "cuda" or not torch.cuda.is_available():
        return index  # with CUDA_DEVICE_ORDER=PCI_BUS_ID torch counts as NVML does
    wanted = (uuid or "").removeprefix("GPU-").lower()
    for i in range(torch.cuda.device_count()):
        if wanted and str(getattr(torch.cuda.get_device_properties(i), "uuid", "")) == wanted:
            return i
    raise EngineInputError(
        f"cuda:{index} is not visible to this process (CUDA_VISIBLE_DEVICES={visible!r})"
    )


def check_torch_devices(vendor: str, torch_devices: Sequence[str]) -> None:
    """Raise EngineInputError when this torch cannot reach devices of `vendor`."""
    gpus = [d for d in torch_devices if torch.device(d).type == "cuda"]
    if not gpus:
        return
    build = torch_build_vendor()
    if build != vendor:
        raise EngineInputError(
            f"this Python's torch {torch.__version__} is a {build} build and cannot drive "
            f"{vendor} devices; name a {vendor} interpreter in the config or use --mode split"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for name in gpus:
        index = torch.device(name).index or 0
        if index >= count:
            raise EngineInputError(f"torch sees {count} {vendor} device(s), so {name} is not one")


def load_model(
    info: ModelInfo,
    torch_devices: Sequence[str],
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    draft: bool = False,
) -> LoadedModel:
    """Load model and tokenizer; several devices get a layer split (embeddings first).
    `draft`: loaded as a draft (its default dtype: `ModelInfo.load_dtype`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    devices = tuple(torch_devices)
    if not devices:
        raise EngineInputError(f"no device given for {info.name}")
    try:
        config = AutoConfig.from_pretrained(info.path, trust_remote_code=trust_remote_code)
        device_map = _device_map(config, devices, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            info.path,
            dtype=_load_dtype(info, devices, dtype, draft),
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(info.path, trust_remote_code=trust_remote_code)
    except EngineInputError:
        raise
    except (*LOAD_ERRORS, pickle.UnpicklingError, SafetensorError) as exc:
        check_model_files(info.path)  # names the damaged file where the files are the cause
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not trust_remote_code and "trust_remote_code" in str(exc):
            reason = reason.rstrip(" .") + (
                "; allow it with --trust-remote-code or [models] trust_remote_code in the config"
            )
        named_by_path = Path(info.name).expanduser().resolve() == Path(info.path).resolve()
        where = "" if named_by_path else f" from {info.path}"
        raise EngineInputError(f"cannot load {info.name}{where}: {reason}") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, devices=devices)


def _load_dtype(
    info: ModelInfo, devices: tuple[str, ...], dtype: str | torch.dtype | None, draft: bool
):
    """Asked dtype, else the catalog's default for these devices and this role, else the
    checkpoint's own."""
    if dtype is None:
        on_cpu = all(torch.device(d).type == "cpu" for d in devices)
        dtype = info.load_dtype(on_cpu=on_cpu, draft=draft)
    if dtype is None:
        return "auto"
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _device_map(config: Any, devices: tuple[str, ...], trust_remote_code: bool):
    """None for the CPU, the whole model on one GPU, or a layer split over several."""
    if len(devices) == 1:
        return None if torch.device(devices[0]).type == "cpu" else {"": devices[0]}
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return layer_split_map(skeleton, devices)


def layer_split_map(model: torch.nn.Module, devices: Sequence[str]) -> dict[str, str]:
    """Module name -> device: decoder layers split evenly in order, embeddings on the first
    device, the final norm (and an untied lm_head) on the last."""
    layers_name, layers = _decoder_layers(model)
    first, last = devices[0], devices[-1]
    device_map: dict[str, str] = {}
    for i in range(len(layers)):
        device_map[f"{layers_name}.{i}"] = devices[i * len(devices) // len(layers)]
    parent_name, _, child = layers_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    after = False
    for name, module in parent.named_children():
        if name == child:
            after = True
            continue
        has_params = any(True for _ in module.parameters())
        # what follows the layers (the final norm) runs last; rotary tables have no weights
        device_map[_join(parent_name, name)] = last if after and has_params else first
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    tied = output is not None and output.weight is embeddings.weight
    for name, module in model.named_children():
        if layers_name.startswith(name + ".") or name in device_map:
            continue
        device_map[name] = last if module is output and not tied else first
    return device_map


def _decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList holding the decoder layers: the one with the most parameters."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and n]
    if not lists:
        raise EngineInputError(
            f"cannot split {type(model).__name__} across devices: no list of decoder layers found"
        )
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
