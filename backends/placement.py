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


def fit_problem(
    device_ids: Sequence[str],
    model_bytes: int | None,
    free_bytes: Mapping[str, int | None],
    what: str,
) -> str | None:
    """Why a model of `model_bytes` cannot fit the free memory of these devices, or None."""
    if model_bytes is None:
        return None
    free = [free_bytes.get(i) for i in device_ids]
    if any(f is None for f in free):
        return None  # a device that reports no memory cannot be judged
    need = int(model_bytes * MEMORY_HEADROOM)
    have = sum(free)  # type: ignore[arg-type]
    if need > have:
        return (
            f"the {what} needs about {need / 2**30:.1f} GiB but {', '.join(device_ids)} "
            f"{'has' if len(device_ids) == 1 else 'have'} {have / 2**30:.1f} GiB free"
        )
    return None


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
    if mode == "inprocess" and draft.simulated != target[0].simulated:
        raise PlacementError("in-process mode cannot mix simulated and real devices")
    free = free_bytes or {}
    shared = placement.draft in placement.target
    if shared and len(placement.target) == 1:
        both = None if target_bytes is None or draft_bytes is None else target_bytes + draft_bytes
        problem = fit_problem(placement.target, both, free, "target and draft together")
    else:
        problem = fit_problem(placement.target, target_bytes, free, "target")
        problem = problem or fit_problem([placement.draft], draft_bytes, free, "draft")
    if problem:
        raise PlacementError(problem)
