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


def test_nothing_imports_ray_without_a_cluster_address():
    """The command line and the dashboard process stay light: Ray only with --cluster."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from app.cli import main\n"
        "from app.commands.dashboard import build_app\n"
        "import app.dashboard, app.run_control, ipc.runner, ipc.cluster_daemons, backends.cluster\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--simulate', 'cuda:1', 'devices', '--json']) == 0\n"
        "    build_app(main.__globals__['build_parser']().parse_args(['--simulate', 'cuda:1']))\n"
        "print(*(m in sys.modules for m in ('ray', 'torch', 'transformers')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]
