"""Placement rules: which roles may go on which devices, and why not. Plain Python."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backends.base import Device

# weights are not all a model needs: activations, KV cache and the runtime take more
MEMORY_HEADROOM = 1.2


class PlacementError(ValueError):
    """A placement that cannot work; the message is one line for the user."""


@dataclass(frozen=True)
class Placement:
    """Target on one or more devices of one backend (a layer split), draft on one device."""

    target: tuple[str, ...]
    draft: str

    @property
    def mode(self) -> str:
        """Default mode: split when the draft sits on a device the target does not use."""
        return "inprocess" if self.draft in self.target else "split"


def parse_device_ids(text: str) -> tuple[str, ...]:
    """`cuda:0,cuda:1` -> ("cuda:0", "cuda:1"); empty parts are an error."""
    ids = tuple(part.strip() for part in text.split(","))
    if not text.strip() or any(not part for part in ids):
        raise PlacementError(f"bad device list {text!r}: expected ids like cuda:0,cuda:1")
    return ids


def default_device(devices: Sequence[Device]) -> Device:
    """The first GPU by id order (real before simulated), else the CPU."""
    gpus = [d for d in devices if d.backend in ("cuda", "hip")]
    if gpus:
        real = [d for d in gpus if not d.simulated] or gpus
        return real[0]
    cpus = [d for d in devices if d.backend == "cpu"]
    if not cpus:
        raise PlacementError("no device found to place a model on")
    return cpus[0]


def target_problem(devices: Sequence[Device]) -> str | None:
    """Why these devices cannot hold one target together, or None."""
    if not devices:
        return "the target needs at least one device"
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        return f"device listed twice in the target split: {', '.join(ids)}"
    hosts = sorted({d.host or "this machine" for d in devices})
    if len(hosts) > 1:
        return (
            f"a target cannot be split across hosts ({' and '.join(hosts)}): one process holds "
            "the target's layers, and a process runs on one host; the draft may sit on any host"
        )
    backends = sorted({d.backend for d in devices})
    if len(backends) > 1:
        return (
            f"a target cannot be split across vendors ({' and '.join(backends)}): "
            "one process holds one torch build, so a layer split needs devices of one backend"
        )
    if len({d.simulated for d in devices}) > 1:
        return "a target cannot be split across simulated and real devices"
    if backends == ["cpu"] and len(devices) > 1:
        return "a target split needs GPUs; the CPU is one device"
    return None


def memory_need(model_bytes: int) -> int:
    """The device memory a model of `model_bytes` weights takes: weights, activations, cache."""
    return int(model_bytes * MEMORY_HEADROOM)


@dataclass(frozen=True)
class Shortfall:
    """A model that does not fit the free memory of its devices, and by how much."""

    what: str  # "target", "draft", "target and draft together"
    device_ids: tuple[str, ...]
    need_bytes: int
    free_bytes: int  # on those devices, less what the draft takes where it shares one
    beside_draft: bool = False

    @property
    def missing_bytes(self) -> int:
        """Free memory still wanting."""
        return self.need_bytes - self.free_bytes

    def __str__(self) -> str:
        verb = "has" if len(self.device_ids) == 1 else "have"
        beside = " beside the draft" if self.beside_draft else ""
        return (
            f"the {self.what} needs about {self.need_bytes / 2**30:.1f} GiB but "
            f"{', '.join(self.device_ids)} {verb} {self.free_bytes / 2**30:.1f} GiB free{beside}"
        )


def shortfall(
    device_ids: Sequence[str],
    model_bytes: int | None,
    free_bytes: Mapping[str, int | None],
    what: str,
    taken_bytes: int = 0,
) -> Shortfall | None:
    """The memory a model lacks on these devices (together), or None when it fits or cannot be
    judged; `taken_bytes` of them already go to another model."""
    if model_bytes is None:
        return None
    free = [free_bytes.get(i) for i in device_ids]
    if any(f is None for f in free):
        return None  # a device that reports no memory cannot be judged
    need, have = memory_need(model_bytes), sum(free) - taken_bytes  # type: ignore[arg-type]
    if need > have:
        return Shortfall(what, tuple(device_ids), need, have, beside_draft=taken_bytes > 0)
    return None


def fit_problem(
    device_ids: Sequence[str],
    model_bytes: int | None,
    free_bytes: Mapping[str, int | None],
    what: str,
) -> str | None:
    """Why a model of `model_bytes` cannot fit the free memory of these devices, or None."""
    short = shortfall(device_ids, model_bytes, free_bytes, what)
    return None if short is None else str(short)


def placement_shortfall(
    placement: Placement,
    target_bytes: int | None,
    draft_bytes: int | None,
    free_bytes: Mapping[str, int | None],
) -> Shortfall | None:
    """What the whole placement lacks: the target over all its devices together, the draft on
    its own, and where the draft shares one of the target's devices, the draft's part of that
    device is not the target's."""
    target, draft = placement.target, placement.draft
    if draft in target and len(target) == 1:
        both = None if target_bytes is None or draft_bytes is None else target_bytes + draft_bytes
        return shortfall(target, both, free_bytes, "target and draft together")
    draft_short = shortfall([draft], draft_bytes, free_bytes, "draft")
    if draft not in target:
        return shortfall(target, target_bytes, free_bytes, "target") or draft_short
    if draft_short is not None:
        return draft_short
    judged = draft_bytes is not None and free_bytes.get(draft) is not None
    taken = memory_need(draft_bytes) if judged else 0  # type: ignore[arg-type]
    return shortfall(target, target_bytes, free_bytes, "target", taken)


def check_placement(
    placement: Placement,
    devices: Mapping[str, Device],
    *,
    mode: str | None = None,
    target_bytes: int | None = None,
    draft_bytes: int | None = None,
    free_bytes: Mapping[str, int | None] | None = None,
) -> None:
    """Raise PlacementError with the first reason this placement cannot work."""
    known = ", ".join(sorted(devices)) or "none"
    for device_id in (*placement.target, placement.draft):
        if device_id not in devices:
            raise PlacementError(f"no device {device_id!r} on this machine (known: {known})")
    target = [devices[i] for i in placement.target]
    draft = devices[placement.draft]
    problem = target_problem(target)
    if problem:
        raise PlacementError(problem)
    mode = mode or placement.mode
    if mode not in ("inprocess", "split"):
        raise PlacementError(f"unknown mode {mode!r} (inprocess or split)")
    if mode == "inprocess" and draft.backend != target[0].backend:
        raise PlacementError(
            f"in-process mode needs the draft on the target's backend ({target[0].backend}), "
            f"not {draft.backend}; use --mode split"
        )
    if mode == "inprocess" and draft.host != target[0].host:
        raise PlacementError(
            f"in-process mode needs the draft on the target's host ({target[0].host}), "
            f"not {draft.host}; use --mode split"
        )
    if mode == "inprocess" and draft.simulated != target[0].simulated:
        raise PlacementError("in-process mode cannot mix simulated and real devices")
    short = placement_shortfall(placement, target_bytes, draft_bytes, free_bytes or {})
    if short is not None:
        raise PlacementError(str(short))
