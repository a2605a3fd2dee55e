"""How the dashboard writes numbers: units, and `n/a` for a metric not reported."""

from __future__ import annotations

NA = "n/a"
# the style of $text-muted for markup, which drops the alpha of that variable
MUTED = "auto 60%"


def gib(value: int | None) -> str:
    """Bytes as GiB with one decimal, or n/a."""
    return NA if value is None else f"{value / 2**30:.1f}"


def size(value: int | None) -> str:
    """Bytes on disk as MiB below a GiB and GiB above, or n/a."""
    if value is None:
        return NA
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def number(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    """A float with a format and unit, or n/a."""
    return NA if value is None else f"{value:{spec}}{unit}"


def percent(value: float | None) -> str:
    """A 0–1 fraction as a whole percentage, or n/a."""
    return NA if value is None else f"{value * 100:.0f}%"


def bar(fraction: float | None, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighths for the last cell)."""
    if fraction is None:
        return "·" * width
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part and full < width else ""
    return ("█" * full + partial).ljust(width, "░")


def flow(pairs: list[tuple[str, str]], width: int, gap: int = 3) -> str:
    """`label value` pairs (value in bold) on as few lines as `width` allows, a pair never split
    across two lines, so a narrow pane does not run one figure's value into the next label."""
    return flow_items(
        [(f"{label} [b]{value}[/b]", len(label) + 1 + len(value)) for label, value in pairs],
        width,
        gap,
    )


def flow_items(items: list[tuple[str, int]], width: int, gap: int = 3) -> str:
    """(markup, cells) items on as few lines as `width` allows, `gap` cells apart, never one
    item split across two lines."""
    lines: list[list[str]] = []
    used = 0
    for markup, cells in items:
        if lines and used + gap + cells <= width:
            lines[-1].append(markup)
            used += gap + cells
        else:
            lines.append([markup])
            used = cells
    return "\n".join((" " * gap).join(line) for line in lines)
