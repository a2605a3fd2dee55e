"""The runs view's plots in the terminal (plotext): one run, or two overlaid.

The same figures as `specdeck runs plot` draws to a PNG, from the same `app.plot_data`.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual import work
from textual.color import Color
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from app.plot_data import (
    PHASES,
    NothingToPlot,
    PlotCache,
    RunPlot,
    Series,
    device_ids,
    phase_line,
)
from ipc.records import RunNotFound

POINTS = 100  # a terminal plot is at most about this many cells wide
LABEL_WIDTH = max(len(p) for p in PHASES)  # every panel's y labels, so their x axes line up
PHASE_ROWS = len(PHASES) + 2  # the phase panel: a row a phase, and its frame
# theme colours every specdeck theme keeps readable (4.5:1) on the plot's background: run A's
# and run B's lines, and a colour a device (the same device the same colour in both runs)
RUN_COLORS = ("chart-utilization", "chart-memory")
DEVICE_COLORS = ("chart-utilization", "chart-memory", "chart-acceptance", "foreground")
RUN_MARKERS = ("braille", "hd")  # run B's lines are drawn in blocks, so they differ without colour


def panel_heights(rows: int, device_lines: int) -> tuple[int, int, int, int]:
    """Rows for the phase, tokens/s, AL and utilization panels (0: the panel is left out):
    the phases while the three others still get 5 rows each, and the utilization panel tall
    enough for its legend (a line a device, its frame, the time axis's labels) while the
    others keep 4."""
    phase = PHASE_ROWS if rows >= PHASE_ROWS + 15 else 0
    rest = max(0, rows - phase)
    utilization = max(rest // 3, min(device_lines + 3, rest - 8))
    share = max(3, (rest - utilization) // 2)
    return phase, share, share, max(3, rest - 2 * share)


class RunPlots(PlotextPlot):
    """The phases, decode tokens/s, acceptance length and device utilization over time:
    `show_runs([id])` draws one run, `show_runs([a, b])` overlays two."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.shown: tuple[str, ...] = ()  # the ids of the runs drawn now
        self._plots: tuple[RunPlot, ...] = ()
        self.problem = ""  # why nothing is drawn, in one line
        self._cache = PlotCache()  # a run the cursor comes back to is not read again

    def on_mount(self) -> None:
        super().on_mount()
        self.app.theme_changed_signal.subscribe(
            self, lambda _: self._draw(self._plots, self.problem)
        )
        self._draw((), "highlight a run to plot it; mark two to overlay them")

    def on_resize(self) -> None:
        if self._plots:  # the panels' heights follow the widget's
            self._draw(self._plots, self.problem)

    def show_runs(self, run_ids: Sequence[str]) -> None:
        """Read these runs' records (off the UI thread) and draw them."""
        self._load(tuple(run_ids))

    @work(thread=True, exclusive=True, group="run-plots")
    def _load(self, run_ids: tuple[str, ...]) -> None:
        from app.config import data_dir

        try:
            plots = tuple(self._cache.load(data_dir(), run_id, POINTS) for run_id in run_ids)
            problem = ""
        except (RunNotFound, NothingToPlot, OSError) as exc:
            plots, problem = (), str(exc)
        if not get_current_worker().is_cancelled:  # a newer choice of runs replaced this one
            self.app.call_from_thread(self._draw, plots, problem)

    def _draw(self, plots: tuple[RunPlot, ...], problem: str) -> None:
        self._plots, self.shown = plots, tuple(p.run_id for p in plots)
        self.problem = problem
        plt = self.plt
        plt.clear_figure()
        if not plots:
            self.border_subtitle = ""
            plt.title(problem)
            self.refresh()
            return
        names = [f"{letter} {p.run_id}" for letter, p in zip("AB", plots, strict=False)]
        runs = " vs ".join(names) if len(plots) > 1 else plots[0].run_id
        self.border_subtitle = f"x: seconds · {runs}"
        lines_drawn = sum(len(p.utilization) for p in plots)
        phase_rows, *heights = panel_heights(self.content_size.height, lines_drawn)
        first = 2 if phase_rows else 1  # the row of the tokens/s panel
        plt.subplots(first + 2, 1)
        panels = [  # (axes, what the legend calls a line, the y labels' unit, a run's lines)
            (plt.subplot(first, 1), "tok/s", "", lambda p: [("", p.throughput)]),
            (plt.subplot(first + 1, 1), "AL", "", lambda p: [("", p.acceptance)]),
            (plt.subplot(first + 2, 1), "", "%", lambda p: list(p.utilization)),  # a line a device
        ]
        phase_ax = None
        if phase_rows:
            phase_ax = plt.subplot(1, 1)
            phase_ax.plotsize(None, phase_rows)
            ticks = [name.rjust(LABEL_WIDTH) for name in PHASES]
            phase_ax.yticks(list(range(len(PHASES))), ticks)
            phase_ax.ylim(-0.5, len(PHASES) - 0.5)
        devices = device_ids(plots)
        for index, plot in enumerate(plots):
            letter = "AB"[index] if len(plots) > 1 else ""
            run_color, marker = self._color(RUN_COLORS[index]), RUN_MARKERS[index]
            if phase_ax is not None:
                self._line(phase_ax, phase_line(plot.phases), run_color, marker, letter or None)
            for ax, what, _, lines in panels:
                for device_id, series in lines(plot):
                    label = " ".join(x for x in (letter, device_id, what) if x)
                    color = run_color
                    if device_id:
                        n = devices.index(device_id) % len(DEVICE_COLORS)
                        color = self._color(DEVICE_COLORS[n])
                    self._line(ax, series, color, marker, label)
        end = max(p.end_s for p in plots) or 1.0
        for (ax, *_), height in zip(panels, heights, strict=True):
            ax.plotsize(None, height)
        for ax, _, unit, lines in panels:
            top = 100.0 if unit == "%" else self._top(plots, lines)
            ax.ylim(0, top)
            ticks = [0.0, top / 2, top]  # labels as wide as the phases', so the panels align
            ax.yticks(ticks, [f"{t:.3g}{unit}".rjust(LABEL_WIDTH) for t in ticks])
        for ax in ([phase_ax] if phase_ax else []) + [ax for ax, *_ in panels]:
            ax.xlim(0, end)
            if ax is not panels[-1][0]:
                ax.xticks([])  # one time axis, under the last panel
        self.refresh()

    def _color(self, variable: str) -> tuple[int, int, int]:
        theme = self.app.theme_variables  # specdeck's own outside its app: the foreground
        return Color.parse(theme.get(variable) or theme["foreground"]).rgb

    @staticmethod
    def _top(plots: Sequence[RunPlot], lines) -> float:
        values = [v for p in plots for _, series in lines(p) for v in series.present()[1]]
        return max(values, default=0.0) * 1.05 or 1.0

    @staticmethod
    def _line(ax, series: Series, color: tuple[int, int, int], marker: str, label: str | None):
        times, values = series.present()
        if times:
            ax.plot(times, values, color=color, marker=marker, label=label)
