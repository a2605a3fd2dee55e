"""Placements files: `[[placement]]` tables of devices, mode and models to bench in turn."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from backends.placement import PlacementError

PLACEMENT_KEYS = ("name", "target", "draft", "mode", "target_model", "draft_model")
MODES = ("inprocess", "split")


@dataclass(frozen=True)
class PlacementSpec:
    """One placement to bench; a None field takes the command line's value."""

    name: str
    target: str | None = None  # device ids as on the command line: "cuda:0,cuda:1"
    draft: str | None = None
    mode: str | None = None
    target_model: str | None = None
    draft_model: str | None = None


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
