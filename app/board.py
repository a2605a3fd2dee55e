"""The placement board: which roles sit on which device cards, and why a drop is refused.

Plain Python, so tests call it without a terminal; the rules themselves are
`backends.placement`'s, fed with the chosen models' sizes and the devices' free memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from backends.base import Device, Sample
from backends.placement import (
    Placement,
    PlacementError,
    Shortfall,
    fit_problem,
    placement_shortfall,
    shortfall,
    target_problem,
)

ROLES = ("target", "draft")


def free_memory(sample: Sample | None) -> int | None:
    """Free bytes of a device from its latest sample, or None when it is not reported."""
    if sample is None or sample.memory_total_bytes is None or sample.memory_used_bytes is None:
        return None
    return max(0, sample.memory_total_bytes - sample.memory_used_bytes)


@dataclass(frozen=True)
class Board:
    """Roles on devices: the target on one or more cards of one backend, the draft on one."""

    devices: Mapping[str, Device]
    target: tuple[str, ...] = ()
    draft: str | None = None
    selected: str = "target"  # the chosen chip, placed by the keyboard path
    target_bytes: int | None = None  # weight bytes on GPUs (ModelInfo.resident_bytes)
    draft_bytes: int | None = None
    free_bytes: Mapping[str, int | None] = field(default_factory=dict)
    # on the CPU half weights load as float32: there the roles weigh these (None: as on GPUs)
    target_cpu_bytes: int | None = None
    draft_cpu_bytes: int | None = None

    @classmethod
    def of(cls, devices: list[Device] | tuple[Device, ...]) -> Board:
        """An empty board over these devices, in discovery order."""
        return cls(devices={d.id: d for d in devices})

    def roles_on(self, device_id: str) -> tuple[str, ...]:
        """The roles placed on one device, target first."""
        roles = ("target",) if device_id in self.target else ()
        return (*roles, "draft") if self.draft == device_id else roles

    def select(self, role: str) -> Board:
        """Choose the chip the keyboard places next."""
        _check_role(role)
        return replace(self, selected=role)

    def with_models(
        self,
        target_bytes: int | None,
        draft_bytes: int | None,
        target_cpu_bytes: int | None = None,
        draft_cpu_bytes: int | None = None,
    ) -> Board:
        """The same placement judged against other model sizes (and their sizes on the CPU)."""
        return replace(
            self,
            target_bytes=target_bytes,
            draft_bytes=draft_bytes,
            target_cpu_bytes=target_cpu_bytes,
            draft_cpu_bytes=draft_cpu_bytes,
        )

    def with_free(self, free_bytes: Mapping[str, int | None]) -> Board:
        """The same placement with fresh free-memory readings."""
        return replace(self, free_bytes=dict(free_bytes))

    def with_devices(self, devices: list[Device] | tuple[Device, ...]) -> Board:
        """The board over a new device list; roles on devices that are gone are dropped."""
        ids = {d.id for d in devices}
        return replace(
            self,
            devices={d.id: d for d in devices},
            target=tuple(i for i in self.target if i in ids),
            draft=self.draft if self.draft in ids else None,
        )

    def stranded_roles(self, devices: Sequence[Device]) -> tuple[tuple[str, str], ...]:
        """(role, device id) of each role placed on a device that is not among `devices`."""
        there = {d.id for d in devices}
        stranded = [("target", i) for i in self.target if i not in there]
        if self.draft is not None and self.draft not in there:
            stranded.append(("draft", self.draft))
        return tuple(stranded)

    def why_not(self, role: str, device_id: str) -> str | None:
        """Why `role` cannot go on `device_id`, or None when it can. A target card that is too
        small alone is welcome while more cards of its kind could make up the split; whether
        the whole placement fits is `missing()`'s question, and launch's."""
        _check_role(role)
        if device_id not in self.devices:
            return f"no device {device_id!r} any more"
        if role == "target":
            if device_id in self.target:
                return f"the target is already on {device_id}"
            return target_problem([self.devices[i] for i in (*self.target, device_id)]) or (
                self._never_fits((*self.target, device_id))
            )
        if self.draft == device_id:
            return f"the draft is already on {device_id}"
        return fit_problem([device_id], self._draft_bytes(device_id), self.free_bytes, "draft")

    def shortfall(self) -> Shortfall | None:
        """The memory the placed roles lack, or None when they fit (or cannot be judged, or the
        target is not placed yet)."""
        if not self.target:
            return None
        target_bytes = self._target_bytes(self.target)
        if self.draft is None:
            return shortfall(self.target, target_bytes, self.free_bytes, "target")
        return placement_shortfall(
            Placement(self.target, self.draft),
            target_bytes,
            self._draft_bytes(self.draft),
            self.free_bytes,
        )

    def missing(self) -> str | None:
        """What the placed roles lack in free memory and what would help, or None."""
        short = self.shortfall()
        if short is None:
            return None
        lacking = f"{short}: {short.missing_bytes / 2**30:.1f} GiB short"
        if short.what == "draft":
            return f"{lacking}; move the DRAFT to a card with more free memory"
        spare = [i for i in self._split_cards(self.target) if i not in self.target]
        roomiest = max(spare, key=lambda i: self.free_bytes.get(i) or 0, default=None)
        if roomiest is not None:
            free = (self.free_bytes.get(roomiest) or 0) / 2**30
            return f"{lacking}; add a card to the TARGET ({roomiest} has {free:.1f} GiB free)"
        if self.draft in self.target:
            return f"{lacking}; move the DRAFT to another card"
        return f"{lacking}; no other card can join this target"

    def place(self, role: str, device_id: str) -> Board:
        """Put a role on a device (the draft moves; the target adds a card to its split)."""
        problem = self.why_not(role, device_id)
        if problem:
            raise PlacementError(problem)
        if role == "target":
            return replace(self, target=(*self.target, device_id))
        return replace(self, draft=device_id)

    def remove(self, role: str, device_id: str) -> Board:
        """Take a role off a device; removing what is not there changes nothing."""
        _check_role(role)
        if role == "target":
            return replace(self, target=tuple(i for i in self.target if i != device_id))
        return replace(self, draft=None) if self.draft == device_id else self

    def move(self, role: str, source: str, destination: str) -> Board:
        """Move a role from one card to another, judged as if it had left the first."""
        if source == destination:
            return self
        return self.remove(role, source).place(role, destination)

    def placement(self) -> Placement:
        """The placement to launch; PlacementError says what is missing, or what the cards
        lack in memory with advice. Its rules are checked once, by `ipc.run_spec.check_run`."""
        if not self.target:
            raise PlacementError("place the TARGET chip on a device card first")
        if self.draft is None:
            raise PlacementError("place the DRAFT chip on a device card first")
        placement = Placement(target=self.target, draft=self.draft)
        lacking = self.missing()
        if lacking:
            raise PlacementError(lacking)
        return placement

    def _split_cards(self, target: tuple[str, ...]) -> tuple[str, ...]:
        """These target cards and every card that may join their split, in device order."""
        held = [self.devices[i] for i in target]
        return tuple(
            i for i, d in self.devices.items() if i in target or not target_problem([*held, d])
        )

    def _never_fits(self, target: tuple[str, ...]) -> str | None:
        """Why no split that holds these cards could fit the target, or None."""
        every = self._split_cards(target)
        short = shortfall(every, self._target_bytes(every), self.free_bytes, "target")
        if short is None:
            return None
        return str(short) if len(every) == 1 else f"{short}, all of them together"

    def _on_cpu(self, device_ids: Sequence[str]) -> bool:
        """ModelInfo.weight_bytes_on's rule: the CPU figure where every card is the CPU."""
        known = [self.devices[i] for i in device_ids if i in self.devices]
        return bool(known) and all(d.backend == "cpu" for d in known)

    def _target_bytes(self, device_ids: Sequence[str]) -> int | None:
        """The target's weight bytes on these cards."""
        if self.target_cpu_bytes is not None and self._on_cpu(device_ids):
            return self.target_cpu_bytes
        return self.target_bytes

    def _draft_bytes(self, device_id: str) -> int | None:
        """The draft's weight bytes on this card."""
        if self.draft_cpu_bytes is not None and self._on_cpu([device_id]):
            return self.draft_cpu_bytes
        return self.draft_bytes


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
