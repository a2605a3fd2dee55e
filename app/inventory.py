"""The devices a command works with: this machine's, or with `--cluster` every node's.

Ray is imported only when a cluster address is given (`--cluster`, or `[cluster] address`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from app.config import load_config
from backends.base import Backend

if TYPE_CHECKING:
    from backends.cluster import ClusterBackend
from backends.discovery import Inventory, Unavailable, discover


def cluster_address(args: argparse.Namespace) -> str | None:
    """`--cluster`, else the config's `[cluster] address`, else None (this machine only)."""
    given = getattr(args, "cluster", None)
    if given is not None:
        return given
    return load_config(getattr(args, "config", None)).cluster_address


def cluster_backend(args: argparse.Namespace) -> ClusterBackend | None:
    """The cluster as one backend (not joined yet), or None without a cluster address."""
    address = cluster_address(args)
    if address is None:
        return None
    from backends.cluster import ClusterBackend

    return ClusterBackend(address)


def open_inventory(
    args: argparse.Namespace, backends: Sequence[Backend] | None = None
) -> Inventory:
    """This machine's devices (`backends`, default all), or with a cluster address the
    devices of every node, joined here: a cluster that cannot be joined is a user error."""
    cluster = cluster_backend(args)
    if cluster is None:
        return discover(args.simulate, backends)
    from backends.cluster import join

    join(cluster.address)  # ClusterUnavailable: one line, exit 2
    inventory = discover(args.simulate, backends=(cluster,))
    notes = tuple(Unavailable(backend, reason) for backend, reason in cluster.unavailable)
    return replace(inventory, unavailable=inventory.unavailable + notes)
