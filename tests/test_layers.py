"""DESIGN.md's import rules as contracts (pyproject.toml's [tool.importlinter]): the build
fails when a change breaks a layer, reaches into the engine from app, or closes a circle."""

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold(capsys):
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)  # the contracts are read from the project's pyproject.toml
    try:
        code = lint_imports(no_cache=True)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert code == 0, out
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert "BROKEN" not in out and out.count("KEPT") == len(contracts["contracts"])
