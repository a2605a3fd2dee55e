"""The dashboard App: themes, the main screen and the runs view; the rest lives in screens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from app.config import data_dir, save_theme
from app.screens.main import MainScreen
from themes.specdeck import DEFAULT_THEME, THEMES, variable_defaults

if TYPE_CHECKING:
    from app.config import Config
    from app.exporter import MetricsExporter
    from backends.discovery import Inventory
    from backends.sampler import DeviceSampler
    from engine.catalog import ModelInfo


class DashboardApp(App):
    """specdeck's terminal dashboard."""

    TITLE = "specdeck"
    SUB_TITLE = "speculative decoding across devices"
    CSS_PATH = Path(__file__).with_name("dashboard.tcss")
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(
        self,
        config: Config,
        inventory: Inventory,
        sampler: DeviceSampler,
        *,
        models: Sequence[ModelInfo] | None = None,
        model_dirs: Sequence[str] = (),
        theme: str | None = None,
        refresh_s: float = 1.0,
        metrics: MetricsExporter | None = None,
    ) -> None:
        """`metrics`: the `/metrics` exporter already serving (`--metrics-port`); it follows
        the dashboard's runs and stops with the app."""
        super().__init__()
        self.config = config
        self.inventory = inventory
        self.sampler = sampler
        self.metrics = metrics
        self._main = MainScreen(
            config,
            inventory,
            sampler,
            models,
            model_dirs,
            refresh_s,
            follow_run=metrics.follow_run if metrics is not None else None,
        )
        for t in THEMES:
            self.register_theme(t)
        self._saved_theme = config.theme
        self.theme = theme or DEFAULT_THEME

    def get_theme_variable_defaults(self) -> dict[str, str]:
        """specdeck's colour variables, for themes (Textual's own) that do not set them: the
        darker shades on a light theme."""
        return variable_defaults(self.current_theme)

    def get_default_screen(self) -> Screen:
        return self._main

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._remember_theme)

    def on_ready(self) -> None:
        """The first frame is up: start the work whose threads would have slowed it down."""
        self.sampler.start()
        self._main.scan_catalog()

    def on_unmount(self) -> None:
        self._main.live_run.close()
        self.sampler.stop()
        if self.metrics is not None:
            self.metrics.close()

    def _remember_theme(self, theme) -> None:
        """Write the theme the user picked into the config file."""
        if theme.name == self._saved_theme:
            return
        try:
            save_theme(self.config, theme.name)
            self._saved_theme = theme.name
        except OSError as exc:
            self.notify(f"could not save the theme: {exc}", severity="warning")

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """Save a screenshot, by default in `screenshots/` under the data folder: Textual's
        default, the Downloads folder, is missing on most servers, where saving failed."""
        if path is None:
            folder = data_dir() / "screenshots"
            try:
                for private in (folder.parent, folder):  # 0700 like the records beside it
                    private.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                self.notify(
                    f"cannot save a screenshot in {folder}: {exc.strerror or exc}",
                    title="Screenshot",
                    severity="error",
                )
                return None
            path = str(folder)
        return super().deliver_screenshot(filename, path, time_format)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Runs", "List and compare past runs", self._main.action_runs)
        for t in THEMES:
            yield SystemCommand(
                f"Theme: {t.name}", f"Switch to the {t.name} theme", lambda n=t.name: self._set(n)
            )

    def _set(self, name: str) -> None:
        self.theme = name

    async def action_quit(self) -> None:
        """Stop every daemon, then leave."""
        if self._main.live_run.watched:
            self._main.live_run.close()  # only stops watching: the run is another process's
        elif self._main.live_run.busy:
            self.notify("stopping the daemons…")
            import asyncio

            await asyncio.to_thread(self._main.live_run.close)
        self.exit()
