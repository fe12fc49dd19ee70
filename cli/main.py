"""The ``movinet`` command: parses arguments and hands over to library functions."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Each module registers its subcommands with ``register(subparsers)``.
COMMAND_MODULES = ("cli.model", "cli.train", "cli.export", "cli.search", "cli.family")

# Commands that train. On x86 CPUs without AVX-512 TensorFlow leaves its oneDNN kernels off; with
# them A0 training runs 1.2x (base) and 1.5x (stream) faster here (benchmarks/bench.py), while
# batch-1 streaming gets slower (more per-op overhead), so only training commands switch them on.
# TensorFlow reads the switch when it is first imported, which is after parsing; local Ray workers
# inherit it.
TRAINING_COMMANDS = ("train", "search", "family")


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="movinet", description="Build, stream, train, export and search MoViNet video networks.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in TRAINING_COMMANDS:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    try:
        return args.run(args) or 0
    except KeyboardInterrupt as err:   # a search says how many trials finished and how to go on
        print(f"movinet {args.command}: {err}" if str(err) else "movinet: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, OSError) as err:
        message = str(err).strip() or type(err).__name__
        print(f"movinet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from cli.main import main as package_main   # the commands raise cli.main's CommandError, not __main__'s

    sys.exit(package_main())
