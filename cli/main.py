"""The ``movinet`` command: parses arguments and hands over to library functions."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Each module registers its subcommands with ``register(subparsers)``.
COMMAND_MODULES = ("cli.model", "cli.train", "cli.export", "cli.search", "cli.family")


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
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("movinet: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, OSError) as err:
        message = str(err).strip() or type(err).__name__
        print(f"movinet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
