"""The models panel: target and draft pickers over the catalog, with each model's facts and
a badge saying whether the draft's tokenizer matches the target's."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Select, Static

from app.widgets.figures import NA, size

if TYPE_CHECKING:  # the catalog module loads with its scan, after the first frame
    from engine.catalog import ModelInfo


def parameters_text(count: int | None) -> str:
    """A parameter count as 125M / 1.3B, or n/a."""
    if count is None:
        return NA
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    if count >= 1e6:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"


def model_facts(info: ModelInfo | None) -> str:
    """One line of what a model is: parameters, size on disk, dtype, architecture; or why a
    broken folder cannot load."""
    if info is None:
        return "[dim]no model chosen[/dim]"
    if info.problem:
        return f"[b]broken[/b]: {escape(info.problem)}"
    return (
        f"{parameters_text(info.parameters)} params · {size(info.size_bytes)} · "
        f"{info.dtype or NA} · {info.architecture or NA}"
    )


def tokenizer_badge(target: ModelInfo | None, draft: ModelInfo | None) -> tuple[str, str]:
    """(text, css class) of the badge comparing the two tokenizers."""
    if target is None or draft is None:
        return "tokenizer: choose both models", "-unknown"
    if target.tokenizer_fingerprint is None or draft.tokenizer_fingerprint is None:
        return "tokenizer: n/a (not found)", "-unknown"
    if target.tokenizer_fingerprint == draft.tokenizer_fingerprint:
        return "✓ tokenizers match", "-match"
    return "✗ tokenizers differ", "-differ"


class ModelsChosen(Message):
    """The target or draft choice changed."""

    def __init__(self, target: ModelInfo | None, draft: ModelInfo | None) -> None:
        super().__init__()
        self.target = target
        self.draft = draft


class ModelsPanel(Vertical):
    """Pick the target and the draft from the catalog."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.models: tuple[ModelInfo, ...] = ()
        self._chosen: dict[str, int | None] = {"target": None, "draft": None}
        self._filled = False

    def compose(self) -> ComposeResult:
        # a one-line slot holds each picker's place until fill() mounts it: Select is slow
        for role in ("target", "draft"):
            yield Static(role, classes="pane-label")
            yield Static("", id=f"slot-{role}", classes="picker-slot")
            yield Static(model_facts(None), id=f"facts-{role}", classes="model-facts")
        yield Static("catalog loading…", id="tokenizer-badge", classes="badge-line -unknown")

    async def fill(self) -> None:
        """Put the pickers in their slots; the screen does it after the first frame."""
        # options and choices as they are now: the catalog may arrive while a picker mounts,
        # and a choice from the new catalog is not a valid value among the old options
        models, options, chosen_now = self.models, self._options(), dict(self._chosen)
        with self.app.batch_update():
            for role in ("target", "draft"):
                if not self.is_attached:  # the app is closing
                    return
                slot = self.query_one(f"#slot-{role}", Static)
                chosen = chosen_now[role]
                picker = Select(
                    options,
                    prompt=f"{role} model",
                    value=Select.NULL if chosen is None else chosen,
                    id=f"pick-{role}",
                    compact=True,
                )
                await self.mount(picker, before=slot)
                await slot.remove()
        self._filled = True
        if self.models != models:  # the catalog came while the pickers were being mounted
            self._show_choices()

    @work(thread=True, exclusive=True, group="catalog")
    def scan(self, dirs: Sequence[str | os.PathLike]) -> None:
        """Scan the model folders (the catalog's and `dirs`) off the UI thread, then show them."""
        from engine.catalog import list_models

        try:
            found = list_models(dirs)
        except Exception as exc:  # a broken cache folder must not take the dashboard down
            self.app.call_from_thread(self.notify, f"model catalog: {exc}", severity="error")
            found = []
        self.app.call_from_thread(self.set_models, found)

    def set_models(self, models: Sequence[ModelInfo]) -> None:
        """Fill both pickers; the bundled demo pair (or the first two models) is preselected."""
        self.models = tuple(models)
        self._chosen = dict(zip(("target", "draft"), self._defaults(), strict=True))
        if self._filled:
            self._show_choices()
        self._refresh()
        if not self.models:
            self.query_one("#tokenizer-badge", Static).update(
                "no models found: use --models-dir or [models] dirs in the config"
            )
        self.post_message(ModelsChosen(self.target, self.draft))

    @property
    def target(self) -> ModelInfo | None:
        """The chosen target model."""
        return self._model("target")

    @property
    def draft(self) -> ModelInfo | None:
        """The chosen draft model."""
        return self._model("draft")

    @on(Select.Changed)
    def _changed(self, event: Select.Changed) -> None:
        event.stop()
        role = (event.select.id or "").removeprefix("pick-")
        value = event.select.value  # not event.value: a stale event must not undo a later pick
        self._chosen[role] = value if isinstance(value, int) else None
        self._refresh()
        self.post_message(ModelsChosen(self.target, self.draft))

    def _show_choices(self) -> None:
        options = self._options()
        for role in ("target", "draft"):
            picker = self.query_one(f"#pick-{role}", Select)
            picker.set_options(options)
            if self._chosen[role] is not None:
                picker.value = self._chosen[role]

    def _model(self, role: str) -> ModelInfo | None:
        index = self._chosen[role]
        return self.models[index] if index is not None and index < len(self.models) else None

    def _options(self) -> list[tuple[str, int]]:
        return [(self._label(m), i) for i, m in enumerate(self.models)]

    def _refresh(self) -> None:
        self.query_one("#facts-target", Static).update(model_facts(self.target))
        self.query_one("#facts-draft", Static).update(model_facts(self.draft))
        text, cls = tokenizer_badge(self.target, self.draft)
        badge = self.query_one("#tokenizer-badge", Static)
        badge.update(text)
        badge.set_classes(f"badge-line {cls}")

    def _defaults(self) -> tuple[int | None, int | None]:
        loadable = [i for i, m in enumerate(self.models) if not m.problem]  # never a broken one
        bundled = [i for i in loadable if self.models[i].bundled]
        if len(bundled) >= 2:
            by_name = sorted(bundled, key=lambda i: self.models[i].size_bytes, reverse=True)
            return by_name[0], by_name[1]
        if len(loadable) >= 2:
            big = sorted(loadable, key=lambda i: -self.models[i].size_bytes)
            return big[0], big[-1]
        return (loadable[0], loadable[0]) if loadable else (None, None)

    @staticmethod
    def _label(m: ModelInfo) -> str:
        tag = " (broken)" if m.problem else " (demo)" if m.bundled else ""
        return f"{m.name}{tag}"
