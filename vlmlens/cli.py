"""The ``vlmlens`` command line: ``vlmlens data ...``, ``vlmlens zoo ...``, ``vlmlens reproduce``, ``vlmlens circuits ...``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["add_model_arguments", "is_toy", "load_model", "main"]

# Subcommand -> module with add_parser(subparsers) and run(args) -> int. Imported lazily.
_COMMANDS = {
    "data": "vlmlens.data.cli",
    "zoo": "vlmlens.zoo.cli",
    "reproduce": "vlmlens.vrp.cli",
    "circuits": "vlmlens.circuits.cli",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device``, ``--device-map``: how the models are loaded (a 7B in bf16 on a GPU)."""
    parser.add_argument("--dtype", default=None, help="parameter dtype, e.g. bfloat16 (default: the checkpoint's; "
                        "fp32 on CPU)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1 (ignored with --device-map)")
    parser.add_argument("--device-map", default=None, help="passed to transformers, e.g. auto (shard over GPUs)")


def is_toy(name: str) -> bool:
    """A shipped zoo toy or a random tiny model (``tiny-<family>``), rather than a real checkpoint."""
    from vlmlens.zoo.registry import NAMES

    return name in NAMES or name.startswith("tiny-")


def load_model(name: str, *, dtype: str | None = None, device: str | None = None,
               device_map: str | None = None) -> object:
    """A model named on the command line: a zoo name, a path, a hub id, or ``tiny-<family>`` (random, tiny)."""
    from vlmlens.model import HookedVLM

    if name.startswith("tiny-"):
        from vlmlens.loading import parse_dtype
        from vlmlens.testing import tiny_hf

        hf, processor = tiny_hf(name.removeprefix("tiny-"))
        return HookedVLM.from_hf(hf.to(device=device or "cpu", dtype=parse_dtype(dtype)), processor)
    return HookedVLM.from_pretrained(name, dtype=dtype, device=device, device_map=device_map)


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
