"""The throughput pane: decode tok/s now and mean, speedup over a target-only baseline,
and how a step's time splits into draft, verify and transport."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widget import Widget

from app.run_control import ThroughputFigures
from app.widgets.figures import NA, flow, flow_items, number
from app.widgets.spark import spark_text

SPLIT_WIDTH = 22
COMPACT_BELOW_ROWS = 8  # fewer rows than this: the figures without captions


def split_bar(draft_s: float, verify_s: float, transport_s: float, width: int) -> str:
    """A bar in three parts (d draft, v verify, t transport) in proportion to their time."""
    total = draft_s + verify_s + transport_s
    if total <= 0:
        return "·" * width
    d = round(width * draft_s / total)
    t = round(width * transport_s / total)
    v = max(width - d - t, 0)
    return f"[$role-draft]{'█' * d}[/][$role-target]{'█' * v}[/][$chart-low]{'█' * t}[/]"


class ThroughputPane(Widget):
    """Decode throughput and the time split of a step (one widget drawing every line)."""

    figures: reactive[ThroughputFigures] = reactive(ThroughputFigures, init=False)

    def render(self) -> str:
        f = self.figures
        width, rows = self.content_size
        history = spark_text(list(f.history), width, None)
        if rows < COMPACT_BELOW_ROWS:  # a short terminal: the figures, the history, the split
            sp = NA if f.speedup is None else f"{f.speedup:.2f}×"
            figures = flow(
                [
                    ("now", f"{number(f.now, '.1f')} tok/s"),
                    ("mean", f"{number(f.mean, '.1f')} tok/s"),
                    ("speedup", sp),
                ],
                width,
            )
            split = split_bar(f.draft_s, f.verify_s, f.transport_s, max(width - 5, 0))
            return f"{figures}\n[$chart-acceptance]{history}[/]\nstep {split}"
        return f"{self._headline(width)}\n[$chart-acceptance]{history}[/]\n\n{self._split(width)}"

    def _headline(self, width: int) -> str:
        f = self.figures
        sp = NA if f.speedup is None else f"{f.speedup:.2f}×"
        now, mean = ("decode now", "decode mean") if width >= 24 else ("now", "mean")
        return flow(
            [
                (now, f"{number(f.now, '.1f')} tok/s"),
                (mean, f"{number(f.mean, '.1f')} tok/s"),
                ("speedup", sp),
                ("baseline", f"{number(f.baseline, '.1f')} tok/s"),
            ],
            width,
        )

    def _split(self, width: int) -> str:
        f = self.figures
        parts = (("draft", f.draft_s, "$role-draft"), ("verify", f.verify_s, "$role-target"))
        parts += (("transport", f.transport_s, "$chart-low"),)
        total = f.draft_s + f.verify_s + f.transport_s
        if total <= 0:
            return "step time\n" + flow_items(
                [(f"{p} {NA}", len(p) + 4) for p, _, _ in parts], width, 2
            )
        bar = split_bar(f.draft_s, f.verify_s, f.transport_s, min(SPLIT_WIDTH, max(width - 10, 0)))
        legend = []
        for name, seconds, colour in parts:
            text = f"{name} {100 * seconds / total:.0f}%"
            legend.append((f"[{colour}]■[/] {text}", len(text) + 2))
        return f"step time {bar}\n{flow_items(legend, width, 2)}"
