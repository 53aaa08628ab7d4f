"""``python -m halotrans <command>``: one entry point for every stage.

Each command lives in the ``cli.py`` of its package and exposes ``add_arguments(parser)`` and
``run(args) -> int`` (or, where a package has several commands, a :class:`Command` named in
:data:`COMMANDS` as ``"module:NAME"``); this file only dispatches (modules are imported lazily, so
``--help`` is fast and a command never pays for another's imports). Errors in user input (configs, data files)
are printed as one clear line and exit with status 2; training that diverged (non-finite loss or
gradient norm) exits with status 3 (:mod:`halotrans.train.divergence`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, NamedTuple, Sequence


class Command(NamedTuple):
    """A command of a module that holds several: its arguments, its body and its ``--help`` text."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


#: command -> ("module" or "module:COMMAND", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("halotrans.sims.cli", "particle-mesh boxes -> HDF5 (linear delta and Lagrangian halo labels)"),
    "shear": ("halotrans.fields.cli", "tidal tensor and scalar shear of a box (serial or under mpiexec)"),
    "train": ("halotrans.train.cli", "train a task (segment | jepa | regress | npe) with DeepSpeed"),
    "evaluate": ("halotrans.eval.cli:EVALUATE", "full-box inference, metrics, plots and report for a checkpoint"),
    "infer": ("halotrans.eval.cli:INFER", "full-box inference on all ranks (torchrun) -> one HDF5"),
    "lightcones": ("halotrans.skatr.cli:LIGHTCONES", "21cmFAST light cones for SKATR -> one HDF5 data set"),
    "skatr": ("halotrans.skatr.cli:SKATR", "SKATR downstream: summaries, regression, NPE, report"),
    "import": ("halotrans.sims.readers.cli", "external N-body / PINOCCHIO output -> our box format"),
    "sweep": ("halotrans.launch.cli", "grid sweeps over config keys with submitit; collect results"),
    "demo": ("halotrans.demo", "the embedded default: simulate -> shear -> train vipr -> evaluate -> report"),
}


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config FILE`` and repeatable ``--set key=value`` overrides."""
    parser.add_argument(
        "--config", "-c", default=default,
        help=f"YAML config (a path, or a name in configs/){f'; default {default}' if default else ''}",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace):
    """Load the config named by ``--config`` with the ``--set`` overrides applied."""
    from halotrans.config import load_config

    return load_config(args.config, args.overrides)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m halotrans <command> [options]   (python -m halotrans <command> --help)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "benchmarks: python -m halotrans.benchmark --help"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from halotrans import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"halotrans: unknown command '{cmd}'\n\n{_usage()}", file=sys.stderr)
        return 2
    target, help_ = COMMANDS[cmd]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    command = getattr(module, attr) if attr else Command(module.add_arguments, module.run)
    parser = argparse.ArgumentParser(prog=f"python -m halotrans {cmd}",
                                     description=command.description or module.__doc__ or help_,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(parser)
    args = parser.parse_args(rest)
    return run_reporting_errors(parser.prog, command.run, args)


def run_reporting_errors(prog: str, fn, *args) -> int:
    """Call ``fn(*args)``; turn input errors into one line on stderr and exit status 2, and an error
    that carries its own int ``exit_status`` (training that diverged: 3) into one line and that status."""
    from halotrans.io import DataError
    from halotrans.yaml_config import ConfigError

    try:
        rc = fn(*args)
    except (ConfigError, DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        status = getattr(e, "exit_status", None)
        if not isinstance(status, int):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return status
    return int(rc or 0)
