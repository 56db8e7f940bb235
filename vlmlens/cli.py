"""The ``vlmlens`` command line: ``vlmlens data ...``, ``vlmlens zoo ...``, ``vlmlens reproduce``, ``vlmlens circuits ...``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["load_model", "main"]

# Subcommand -> module with add_parser(subparsers) and run(args) -> int. Imported lazily.
_COMMANDS = {
    "data": "vlmlens.data.cli",
    "zoo": "vlmlens.zoo.cli",
    "reproduce": "vlmlens.vrp.cli",
    "circuits": "vlmlens.circuits.cli",
}


def load_model(name: str) -> object:
    """A model named on the command line: a zoo name, a path, a hub id, or ``tiny-<family>`` (random, tiny)."""
    if name.startswith("tiny-"):
        from vlmlens.testing import tiny_vlm

        return tiny_vlm(name.removeprefix("tiny-"))
    from vlmlens.model import HookedVLM

    return HookedVLM.from_pretrained(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmlens", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (sets TQDM_DISABLE=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        try:
            importlib.import_module(module).add_parser(subparsers)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlmlens`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the process is this command: every bar reads it (vlmlens.progress)
    import transformers

    transformers.logging.set_verbosity_error()
    return int(importlib.import_module(_COMMANDS[args.command]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
