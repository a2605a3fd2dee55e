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
    check_placement,
    fit_problem,
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
    target_bytes: int | None = None
    draft_bytes: int | None = None
    free_bytes: Mapping[str, int | None] = field(default_factory=dict)

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

    def with_models(self, target_bytes: int | None, draft_bytes: int | None) -> Board:
        """The same placement judged against other model sizes."""
        return replace(self, target_bytes=target_bytes, draft_bytes=draft_bytes)

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
        """Why `role` cannot be placed on `device_id` now, or None when it can."""
        _check_role(role)
        if device_id not in self.devices:
            return f"no device {device_id!r} any more"
        if role == "target":
            if device_id in self.target:
                return f"the target is already on {device_id}"
            return self._problem((*self.target, device_id), self.draft)
        if self.draft == device_id:
            return f"the draft is already on {device_id}"
        return self._problem(self.target, device_id)

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
        """The placement to launch; PlacementError says what is missing or wrong."""
        if not self.target:
            raise PlacementError("place the TARGET chip on a device card first")
        if self.draft is None:
            raise PlacementError("place the DRAFT chip on a device card first")
        placement = Placement(target=self.target, draft=self.draft)
        check_placement(
            placement,
            self.devices,
            target_bytes=self.target_bytes,
            draft_bytes=self.draft_bytes,
            free_bytes=self.free_bytes,
        )
        return placement

    def _problem(self, target: tuple[str, ...], draft: str | None) -> str | None:
        """Why a (possibly partial) placement cannot work, or None."""
        if target:
            problem = target_problem([self.devices[i] for i in target])
            if problem:
                return problem
        if target and draft is not None:
            try:
                check_placement(
                    Placement(target=target, draft=draft),
                    self.devices,
                    target_bytes=self.target_bytes,
                    draft_bytes=self.draft_bytes,
                    free_bytes=self.free_bytes,
                )
            except PlacementError as exc:
                return str(exc)
            return None
        if target:
            return fit_problem(target, self.target_bytes, self.free_bytes, "target")
        if draft is not None:
            return fit_problem([draft], self.draft_bytes, self.free_bytes, "draft")
        return None


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
