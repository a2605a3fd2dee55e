"""The user's config file (TOML) and the folders specdeck keeps its data in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

BACKEND_NAMES = ("cuda", "hip", "cpu")


class ConfigError(ValueError):
    """A config file that cannot be read or has a bad value; the message is one line."""


@dataclass(frozen=True)
class Config:
    """What the config file says; every field has a default."""

    path: Path
    theme: str | None = None
    model_dirs: tuple[Path, ...] = ()
    backend_python: dict[str, str] = field(default_factory=dict)  # backend -> interpreter
    trust_remote_code: tuple[str, ...] = ()  # model names or paths allowed to run their code
    cluster_address: str | None = None  # [cluster] address: the Ray cluster to join

    def python_for(self, backend: str) -> str | None:
        """The interpreter named for a backend's daemons, or None for specdeck's own."""
        return self.backend_python.get(backend)


def default_config_path() -> Path:
    env = os.environ.get("SPECDECK_CONFIG")
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("specdeck")) / "config.toml"


def data_dir() -> Path:
    """Where run records live: $SPECDECK_DATA_DIR, else the platform's user data folder."""
    env = os.environ.get("SPECDECK_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("specdeck"))


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read the config; a missing default file is an empty config, a missing named one is not."""
    explicit = path is not None
    cfg_path = Path(path) if explicit else default_config_path()
    if not cfg_path.exists():
        if explicit:
            raise ConfigError(f"config file {cfg_path} does not exist")
        return Config(path=cfg_path)
    import tomllib  # only when there is a file to read: most starts have none

    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {cfg_path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {cfg_path} is not valid TOML: {exc}") from None
    return _parse(cfg_path, raw)


def _parse(cfg_path: Path, raw: dict) -> Config:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"config file {cfg_path}: {what}")

    theme = raw.get("theme")
    if theme is not None and not isinstance(theme, str):
        raise bad("'theme' must be a string")
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise bad("[models] must be a table")
    dirs = models.get("dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise bad("[models] dirs must be a list of paths")
    trust = models.get("trust_remote_code", [])
    if not isinstance(trust, list) or not all(isinstance(t, str) for t in trust):
        raise bad("[models] trust_remote_code must be a list of model names or paths")
    backends = raw.get("backends", {})
    if not isinstance(backends, dict):
        raise bad("[backends] must be a table")
    pythons: dict[str, str] = {}
    for name, table in backends.items():
        if name not in BACKEND_NAMES:
            raise bad(f"unknown backend [backends.{name}] (known: {', '.join(BACKEND_NAMES)})")
        if not isinstance(table, dict):
            raise bad(f"[backends.{name}] must be a table")
        python = table.get("python")
        if python is not None:
            if not isinstance(python, str) or not python:
                raise bad(f"[backends.{name}] python must be a path to an interpreter")
            pythons[name] = python
    cluster = raw.get("cluster", {})
    if not isinstance(cluster, dict):
        raise bad("[cluster] must be a table")
    address = cluster.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise bad('[cluster] address must be a Ray address, e.g. "10.0.0.5:6379"')
    return Config(
        path=cfg_path,
        cluster_address=address,
        theme=theme,
        model_dirs=tuple(Path(d).expanduser() for d in dirs),
        backend_python=pythons,
        trust_remote_code=tuple(trust),
    )


def theme_problem(name: str) -> str | None:
    """Why `name` is no theme specdeck knows ("unknown theme ... (known: ...)"), or None."""
    from textual.theme import BUILTIN_THEMES

    from themes.specdeck import THEMES

    if name in {t.name for t in THEMES} or name in BUILTIN_THEMES:
        return None
    known = ", ".join(t.name for t in THEMES)
    return f"unknown theme {name!r} (known: {known}, and Textual's own)"


def save_theme(cfg: Config, theme: str) -> None:
    """Remember the chosen theme, keeping the rest of the file as it is."""
    cfg.path.parent.mkdir(parents=True, exist_ok=True)
    lines = cfg.path.read_text(encoding="utf-8").splitlines() if cfg.path.exists() else []
    # the theme is a top-level key, so it must come before the first table
    lines = [ln for ln in lines if not ln.strip().startswith("theme")]
    cfg.path.write_text("\n".join([f'theme = "{theme}"', *lines]) + "\n", encoding="utf-8")
