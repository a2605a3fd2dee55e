"""The `specdeck` command line: parses options and hands each subcommand to its module.

Subcommand modules are imported only when chosen, so the dashboard never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app.signals import exit_status, raise_on_stop_signals
from ipc.records import RecordWriteError

COMMANDS = ("devices", "models", "run", "bench", "runs", "daemon")


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    """Placement and generation options shared by `run` and `bench` (DESIGN.md)."""
    g = parser.add_argument_group("placement and generation")
    g.add_argument("--target-model", help="directory or catalog name (default: bundled demo)")
    g.add_argument("--draft-model", help="directory or catalog name (default: bundled demo)")
    g.add_argument("--target", help="device id(s) for the target, e.g. cuda:0 or cuda:0,cuda:1")
    g.add_argument("--draft", help="device id for the draft, e.g. cuda:1, hip:0 or cpu")
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-file", help="read the prompt from this file")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--k", default="6", help="draft tokens per step: N or auto (default 6)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--mode",
        choices=("inprocess", "split"),
        help="default: split when the draft is on a device the target does not use, else inprocess",
    )
    g.add_argument("--baseline", action="store_true", help="also run target-only decoding")
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the models' own code to run (off by default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdeck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--simulate", metavar="SPEC", help="add simulated devices, e.g. cuda:2,hip:1"
    )
    parser.add_argument("--config", metavar="FILE", help="config file (TOML)")
    parser.add_argument("--theme", metavar="NAME", help="dashboard theme")
    parser.add_argument(
        "--models-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of models for the catalog (repeatable)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("devices", help="list devices and their telemetry")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh until Ctrl-C")

    p = sub.add_parser("models", help="list the model catalog")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run speculative decoding once, headless")
    add_placement_options(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="benchmark placements on a prompt suite")
    add_placement_options(p)
    p.add_argument("--suite", default="humaneval", choices=("humaneval",))
    p.add_argument("--n", type=int, default=10, help="first N prompts")
    p.add_argument("--sample", type=int, metavar="N", help="N random prompts (with --seed)")
    p.add_argument("--placements", metavar="FILE", help="TOML file of placements to run")
    p.add_argument("--peers", action="append", default=[], choices=("hf",))
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="list and show run records")
    p.add_argument("action", nargs="?", choices=("show",))
    p.add_argument("run_id", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("daemon", help="(started by the supervisor)")
    p.add_argument("--role", required=True, choices=("draft", "target"))
    p.add_argument("--spec", required=True, help="path of the daemon's launch spec (JSON)")
    # global options may also follow the command; SUPPRESS keeps a value given before it
    for command_parser in sub.choices.values():
        for flag, metavar in (("--simulate", "SPEC"), ("--config", "FILE"), ("--theme", "NAME")):
            command_parser.add_argument(
                flag, metavar=metavar, default=argparse.SUPPRESS, help="global option"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command or "dashboard"
    try:
        if name != "daemon":
            raise_on_stop_signals()
            clean_up_after_killed_runs()
        if args.config is not None:  # a named config must be readable, whatever the command
            from app.config import load_config

            load_config(args.config)
        module = importlib.import_module(f"app.commands.{name}")
        return module.main(args)
    except KeyboardInterrupt as interrupt:
        record = getattr(interrupt, "record_dir", None)
        where = f"; its record is in {record}" if record else ""
        print(f"specdeck: stopped{where}", file=sys.stderr)
        return exit_status(interrupt)
    except RecordWriteError as exc:  # a full disk mid-run: the record keeps what it had
        print(f"specdeck: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line and status 2 for what the user asked wrongly
        if _is_user_error(exc):
            print(f"specdeck: {exc}", file=sys.stderr)
            return 2
        raise


def clean_up_after_killed_runs() -> None:
    """Mark `interrupted` the records of runs whose specdeck was killed, remove their run dirs."""
    from app.config import data_dir
    from ipc.owners import remove_stale_run_dirs
    from ipc.records import mark_interrupted

    try:
        mark_interrupted(data_dir())
        remove_stale_run_dirs()
    except OSError:
        pass  # tidying up must never stop the command the user asked for


def _is_user_error(exc: Exception) -> bool:
    from app.config import ConfigError
    from backends.base import BadSimulateSpec
    from backends.placement import PlacementError
    from engine.errors import EngineInputError
    from ipc.records import RecordDirError

    return isinstance(
        exc, ConfigError | BadSimulateSpec | PlacementError | EngineInputError | RecordDirError
    )


if __name__ == "__main__":
    sys.exit(main())
