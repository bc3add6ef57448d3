"""``fmpn <command>``: dispatches to the subcommand modules in this package.

Each module exposes ``register(subparsers)``, which adds its parsers and sets ``func`` on them.
Heavy imports (torch, the service) happen inside the command functions, so ``fmpn --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import fmpn

# Subcommand modules, in the order they appear in --help.
COMMAND_MODULES = (
    "cli.train",
    "cli.evaluate",
    "cli.crops",
    "cli.masks",
    "cli.export",
    "cli.serve",
    "cli.predict",
    "cli.video",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmpn", description="Facial Motion Prior Networks: train, evaluate, serve")
    parser.add_argument("--version", action="version", version=f"fmpn-fer {fmpn.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group not written yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: a clear one-line error, not a stack trace.
        print(f"fmpn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`fmpn evaluate ... | head -1`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
