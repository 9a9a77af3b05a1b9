"""The `clipstack` command: one subcommand per stage, registered by each stage's own `cli.py`.

Each stage module `clipstack/<stage>/cli.py` defines `register(subparsers)`, which adds its subcommands
with `set_defaults(func=handler)`; a handler takes the parsed args and returns an exit code. Those
modules import only argparse at the top, so `clipstack --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from clipstack import __version__
from clipstack.errors import ClipstackError

# In data-flow order; a module that does not exist yet is skipped, so no command is ever faked.
STAGE_CLI_MODULES = [
    "clipstack.data.cli",
    "clipstack.data.synthetic.cli",
    "clipstack.curate.cli",
    "clipstack.models.cli",
    "clipstack.train.cli",
    "clipstack.evaluate.cli",
    "clipstack.search.cli",
    "clipstack.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipstack",
        description="Contrastive language-image pretraining: ingest, curate, train, evaluate, search.",
    )
    parser.add_argument("--version", action="version", version=f"clipstack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_CLI_MODULES:
        if not _module_exists(name):
            continue
        importlib.import_module(name).register(sub)
    return parser


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is not there either
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except ClipstackError as err:
        print(f"clipstack: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipstack: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `clipstack ... | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 141


if __name__ == "__main__":
    sys.exit(main())
