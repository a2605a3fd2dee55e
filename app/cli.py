"""The `specdeck` command line: parses options and hands each subcommand to its module.

Subcommand modules are imported only when chosen, so the dashboard never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from app.signals import exit_status, raising_on_stop_signals
from ipc.records import RecordWriteError
from ipc.run_spec import (
    DEFAULT_K,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    K_LIMIT,
)

COMMANDS = ("devices", "models", "run", "bench", "runs", "exporter", "serve", "daemon")
DESCRIPTION = """\
specdeck: speculative decoding experiments across CUDA, HIP and CPU devices.

Without a command, specdeck opens the dashboard: pick a target and a draft model, place them
on devices, launch, and watch acceptance and throughput live. The commands below do the same
headless."""
EPILOG = """\
examples:
  specdeck --simulate cuda:2           the dashboard, with two simulated GPUs
  specdeck run --baseline              the bundled demo pair on the first GPU (or the CPU)
  specdeck run --target cuda:0 --draft cuda:1 --prompt "def quicksort(xs):"
  specdeck runs show ID                one recorded run
  specdeck runs plot ID1 ID2           two runs' tokens/s, AL and devices overlaid, as a PNG
  specdeck --simulate cuda:2 serve     the dashboard as a web page on http://127.0.0.1:8000
  specdeck exporter --port 9464        Prometheus /metrics of the devices and live runs

`specdeck COMMAND --help` lists a command's options."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, with a pointer to --help, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"specdeck: {message} (see `{self.prog} --help`)\n")


class VersionAction(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("specdeck")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"specdeck {text}")
        parser.exit(0)


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    """Placement and generation options shared by `run` and `bench` (DESIGN.md)."""
    g = parser.add_argument_group("placement and generation")
    g.add_argument("--target-model", help="directory or catalog name (default: bundled demo)")
    g.add_argument("--draft-model", help="directory or catalog name (default: bundled demo)")
    g.add_argument(
        "--target",
        metavar="DEV[,DEV...]",
        help="device id(s) for the target, e.g. cuda:0 or cuda:0,cuda:1 "
        "(default: the first GPU, else cpu)",
    )
    g.add_argument(
        "--draft",
        metavar="DEV",
        help="device id for the draft, e.g. cuda:1, hip:0 or cpu (default: the target's first)",
    )
    g.add_argument("--prompt", metavar="TEXT", help=f"prompt text (default: {DEFAULT_PROMPT!r})")
    g.add_argument("--prompt-file", metavar="FILE", help="read the prompt from this file")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help="tokens to generate; prompt + N + k must fit both models' context "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--k",
        default=str(DEFAULT_K),
        metavar="N|auto",
        help=f"draft tokens per step, 1 to {K_LIMIT}, or auto to adapt (default: %(default)s)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        metavar="T",
        help="0 is greedy (the same tokens as target-only decoding); above 0, speculative "
        "sampling (default: %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="S",
        help="random seed for sampling, 0 to 2**64-1 (default: %(default)s)",
    )
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
    g.add_argument(
        "--transport",
        default="ipc",
        metavar="ipc|tcp",
        help="how the daemons talk: ipc (default) or tcp on 127.0.0.1 with CURVE encryption, "
        "the transport used between hosts (to test or measure it)",
    )


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    """`run`'s workload: several prompts, in rounds or for a time, through the same daemons."""
    g = parser.add_argument_group("workload (the models load once; one session per prompt)")
    g.add_argument("--suite", metavar="NAME", help="the prompts of a suite, e.g. humaneval")
    g.add_argument(
        "--prompts-file",
        metavar="FILE",
        help='prompts from a file: one a line, or JSON Lines with a "prompt" field',
    )
    g.add_argument("--n", type=int, metavar="N", help="only the first N of those prompts")
    g.add_argument(
        "--repeat", type=int, metavar="N", help="decode the prompts N times (default: once)"
    )
    g.add_argument(
        "--duration",
        metavar="TIME",
        help="go round the prompts for this long, e.g. 90s, 30m, 2h (the prompt going on "
        "finishes; loading is not counted)",
    )


GLOBAL_OPTIONS = (
    ("--simulate", "SPEC", "add simulated devices, e.g. cuda:2,hip:1 (ids sim-cuda:0, ...)"),
    ("--config", "FILE", "config file, TOML (default: $SPECDECK_CONFIG, else the user's)"),
    ("--theme", "NAME", "dashboard theme, e.g. specdeck-dark, specdeck-light"),
    ("--cluster", "ADDRESS", "join this Ray cluster (HOST:PORT) and use every node's devices"),
)
MODELS_DIR_HELP = "one more folder of models for the catalog (repeatable)"
METRICS_PORT_HELP = (
    "also serve Prometheus /metrics of this process's devices and run on 127.0.0.1:PORT"
)


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free one); argparse reports anything else."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="specdeck",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    for flag, metavar, text in GLOBAL_OPTIONS:
        parser.add_argument(flag, metavar=metavar, help=text)
    parser.add_argument(
        "--models-dir", action="append", default=[], metavar="DIR", help=MODELS_DIR_HELP
    )
    parser.add_argument(
        "--metrics-port", type=port_number, metavar="PORT", help=f"dashboard: {METRICS_PORT_HELP}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    json_help = "print one JSON document (stable keys) instead of text"

    p = sub.add_parser("devices", help="list devices and their telemetry")
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh until Ctrl-C")

    p = sub.add_parser("models", help="list the model catalog (and folders that cannot load)")
    p.add_argument("--json", action="store_true", help=json_help)

    p = sub.add_parser("run", help="run speculative decoding, headless: a prompt or a workload")
    add_placement_options(p)
    add_workload_options(p)
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        default=argparse.SUPPRESS,  # one given before the command stays
        help=METRICS_PORT_HELP,
    )

    p = sub.add_parser("bench", help="benchmark placements on a prompt suite")
    add_placement_options(p)
    p.add_argument("--suite", default="humaneval", choices=("humaneval",), help="prompt suite")
    p.add_argument("--n", type=int, default=10, help="first N prompts (default: %(default)s)")
    p.add_argument("--sample", type=int, metavar="N", help="N random prompts (with --seed)")
    p.add_argument("--placements", metavar="FILE", help="TOML file of placements to run")
    p.add_argument(
        "--peers",
        action="append",
        default=[],
        choices=("hf",),
        help="also run transformers' assisted generation (hf)",
    )
    p.add_argument("--out", metavar="DIR", help="write bench.json, bench.md and a chart here")
    p.add_argument("--json", action="store_true", help=json_help)

    p = sub.add_parser("runs", help="list the run records (newest first), show or plot one")
    p.add_argument(
        "action", nargs="?", choices=("show", "plot"), help="show one run, or plot one or two"
    )
    p.add_argument("run_id", nargs="?", metavar="ID", help="a run id, or a unique prefix of one")
    p.add_argument("other_run_id", nargs="?", metavar="ID2", help="plot: a second run, overlaid")
    p.add_argument(
        "--out", metavar="FILE.png", help="plot: the PNG to write (default: ./ID[-vs-ID2].png)"
    )
    p.add_argument("--json", action="store_true", help=json_help)

    p = sub.add_parser(
        "exporter", help="serve Prometheus /metrics of this machine's devices and live runs"
    )
    p.add_argument("--port", type=port_number, default=9464, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 lets other machines scrape (default: %(default)s)",
    )

    p = sub.add_parser(
        "serve", help="serve the dashboard as a web page (no login: see docs/serve.md)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but localhost lets others drive the dashboard "
        "(default: %(default)s)",
    )
    p.add_argument("--port", type=port_number, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the address browsers reach this server by, when a tunnel or proxy changes it "
        "(default: http://HOST:PORT)",
    )

    # started by the supervisor, not by people: left out of the help
    p = sub.add_parser("daemon")
    p.add_argument("--role", required=True, choices=("draft", "target"))
    p.add_argument("--spec", required=True, help="path of the daemon's launch spec (JSON)")
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != "daemon"]
    # global options may also follow the command; SUPPRESS keeps a value given before it
    for command_parser in sub.choices.values():
        group = command_parser.add_argument_group("global options")
        for flag, metavar, text in GLOBAL_OPTIONS:
            group.add_argument(flag, metavar=metavar, default=argparse.SUPPRESS, help=text)
        # appended apart, then joined with the ones given before the command (main)
        group.add_argument(
            "--models-dir",
            dest="models_dir_after",
            action="append",
            default=[],
            metavar="DIR",
            help=MODELS_DIR_HELP,
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return done.code if isinstance(done.code, int) else 0
    args.models_dir = [*args.models_dir, *getattr(args, "models_dir_after", [])]
    name = args.command or "dashboard"
    if args.metrics_port is not None and name not in ("dashboard", "run"):
        print(
            f"specdeck: --metrics-port is for the dashboard and `specdeck run`, not {name} "
            "(see `specdeck exporter --help`)",
            file=sys.stderr,
        )
        return 2
    if name == "daemon":  # the supervisor ends its daemons itself
        return _run_command(args, name)
    with raising_on_stop_signals():
        return _run_command(args, name)


def _run_command(args: argparse.Namespace, name: str) -> int:
    """One command, its user errors turned into one line and an exit status."""
    try:
        if name != "daemon":
            clean_up_after_killed_runs()
        if args.config is not None:  # a named config must be readable, whatever the command
            from app.config import load_config

            load_config(args.config)
        if name != "daemon":
            warn_about_theme(args, name)
        module = importlib.import_module(f"app.commands.{name}")
        status = module.main(args)
        sys.stdout.flush()  # here, so that a reader that went away is caught below
        return status
    except BrokenPipeError:  # `specdeck runs | head`: the reader has what it wanted
        _drop_stdout()
        return 141  # as a process that SIGPIPE ended
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


def warn_about_theme(args: argparse.Namespace, command: str) -> None:
    """Say so when a theme name is unknown: `--theme` (the dashboard refuses it itself) or the
    config's, which the dashboard would otherwise replace by the default without a word."""
    from app.config import load_config, theme_problem

    if args.theme is not None and command != "dashboard":
        problem = theme_problem(args.theme)
        if problem:
            print(f"specdeck: warning: --theme: {problem}; ignored", file=sys.stderr)
    if command == "dashboard" and args.theme is None:
        config = load_config(args.config)
        problem = config.theme and theme_problem(config.theme)
        if problem:
            print(
                f"specdeck: warning: config file {config.path}: {problem}; using the default theme",
                file=sys.stderr,
            )


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is no real file (a test's capture): nothing will flush to a pipe


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
    from app.exporter import MetricsPortError
    from backends.base import BadSimulateSpec
    from backends.cluster import ClusterUnavailable
    from backends.placement import PlacementError
    from engine.errors import EngineInputError
    from ipc.records import RecordDirError

    return isinstance(
        exc,
        ConfigError
        | BadSimulateSpec
        | ClusterUnavailable
        | PlacementError
        | EngineInputError
        | RecordDirError
        | MetricsPortError,
    )


if __name__ == "__main__":
    sys.exit(main())
