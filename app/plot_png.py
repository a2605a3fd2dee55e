"""`specdeck runs plot`: one run's plots, or two runs overlaid, drawn to a PNG (matplotlib).

Imported only by that command: matplotlib costs the rest of the command line nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from app.plot_data import PHASES, RunPlot, device_ids

PHASE_COLORS = {"load": "#9e9e9e", "prefill": "#f4a261", "decode": "#8ecae6", "idle": "#e9ecef"}
RUN_COLORS = ("#1f5fa8", "#d1495b")  # run A, run B


def _run_label(letter: str, plot: RunPlot) -> str:
    figures = []
    if plot.mean_acceptance_length is not None:
        figures.append(f"mean AL {plot.mean_acceptance_length:.2f}")
    if plot.decode_tokens_per_s is not None:
        figures.append(f"{plot.decode_tokens_per_s:.1f} tok/s")
    return f"{letter}: {plot.run_id}  {plot.title}" + (
        f"  ({', '.join(figures)})" if figures else ""
    )


def write_png(plots: Sequence[RunPlot], out: str | os.PathLike) -> None:
    """Draw one run (phases shaded behind every panel) or two overlaid (phases as a strip
    per run) with each device's utilization in a panel under them; write `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    devices = device_ids(plots)
    ratios = [0.35 * len(plots), 2.2, 2.2] + [1.0] * len(devices)
    fig, axes = plt.subplots(
        len(ratios),
        1,
        sharex=True,
        figsize=(12, 1.2 + sum(ratios) * 1.05),
        gridspec_kw={"height_ratios": ratios},
        squeeze=False,
        layout="constrained",
    )
    strip, rate_ax, al_ax, *device_axes = axes[:, 0]
    letters = "AB"
    for row, plot in enumerate(plots):
        for span in plot.phases:
            width = max(span.end_s - span.start_s, 1e-3)
            strip.broken_barh(
                [(span.start_s, width)], (row + 0.1, 0.8), color=PHASE_COLORS[span.phase]
            )
    strip.set_ylim(0, len(plots))
    strip.set_yticks([row + 0.5 for row in range(len(plots))], list(letters[: len(plots)]))
    strip.invert_yaxis()
    strip.set_ylabel("phase", rotation=0, ha="right", va="center")
    strip.tick_params(left=False)
    if len(plots) == 1:
        for ax in (rate_ax, al_ax, *device_axes):
            for span in plots[0].phases:
                ax.axvspan(
                    span.start_s, span.end_s, color=PHASE_COLORS[span.phase], alpha=0.35, lw=0
                )

    for letter, color, plot in zip(letters, RUN_COLORS, plots, strict=False):
        rate_ax.plot(*plot.throughput.present(), color=color, lw=1.4, label=letter)
        al_ax.plot(*plot.acceptance.present(), color=color, lw=1.4, label=letter)
        for ax, device_id in zip(device_axes, devices, strict=True):
            for shown, series in plot.utilization:
                if shown == device_id:
                    ax.plot(*series.present(), color=color, lw=1.2)
    rate_ax.set_ylabel("decode\ntokens/s")
    al_ax.set_ylabel("acceptance\nlength")
    rate_ax.set_ylim(bottom=0)
    al_ax.set_ylim(bottom=0)
    for ax, device_id in zip(device_axes, devices, strict=True):
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"{device_id}\nutil %")
    for ax in axes[:, 0]:
        ax.grid(axis="y", color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)
    axes[-1, 0].set_xlabel("seconds since the run started")
    axes[-1, 0].set_xlim(0, max(p.end_s for p in plots) or 1.0)

    title = "\n".join(_run_label(letter, p) for letter, p in zip(letters, plots, strict=False))
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    phase_keys = [Patch(color=PHASE_COLORS[name], label=name) for name in PHASES]
    run_keys = []
    if len(plots) > 1:
        run_keys = [
            matplotlib.lines.Line2D([], [], color=c, label=letter)
            for letter, c in zip(letters, RUN_COLORS, strict=False)
        ]
    strip.legend(
        handles=run_keys + phase_keys,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.05),
        ncol=len(run_keys) + len(phase_keys),
        fontsize=8,
        frameon=False,
    )
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
