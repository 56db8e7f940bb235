"""``vlmlens data ...`` subcommands (the top-level ``vlmlens.cli`` dispatches here).

``vlmlens data synth --split adversarial --images 500 --seed 0 --size 64 --out DIR``
writes a SynthPOPE split in POPE format (see :meth:`SynthPope.export`).

Examples:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="vlmlens")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["data", "synth", "--images", "2", "--out", "/tmp/x"])
    >>> args.split, args.images, args.func is run
    ('adversarial', 2, True)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from vlmlens.data.pope import SPLITS
from vlmlens.data.synth import synth_pope
from vlmlens.errors import DataError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``data`` (with its ``synth`` subcommand) on an argparse subparsers object.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``data`` parser. Parsed ``synth`` arguments carry ``func=run``.
    """
    data = subparsers.add_parser("data", help="POPE data tools", description="POPE data tools.")
    sub = data.add_subparsers(dest="data_command", metavar="{synth}")
    sub.required = True
    synth = sub.add_parser(
        "synth",
        help="generate a SynthPOPE split in POPE format",
        description="Generate SynthPOPE images, POPE-format questions and ground truth.",
    )
    synth.add_argument("--split", choices=SPLITS, default="adversarial", help="negative sampling (default: %(default)s)")
    synth.add_argument("--images", type=int, default=500, metavar="N", help="number of images (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    synth.add_argument("--size", type=int, default=64, metavar="PX", help="image side in pixels (default: %(default)s)")
    synth.add_argument("--noise", type=float, default=None, help="pixel noise std, fraction of 255 (default: 0.04)")
    synth.add_argument("--contrast", type=float, default=None, help="object contrast in (0, 1] (default: 1.0)")
    synth.add_argument("--occlusion", type=float, default=None, help="largest hidden fraction of an object, in [0, 1) (default: 0)")
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder")
    synth.add_argument("--overwrite", action="store_true", help="replace files of an earlier export")
    synth.set_defaults(func=run)
    return data


def run(args: argparse.Namespace) -> int:
    """Run ``vlmlens data synth``: generate, export, print a summary.

    Returns:
        0 on success, 2 when the arguments or the output folder are unusable (the
        reason goes to stderr).
    """
    try:
        ds = synth_pope(
            args.split,
            args.images,
            seed=args.seed,
            image_size=args.size,
            noise=args.noise,
            contrast=args.contrast,
            occlusion=args.occlusion,
        )
        paths = ds.export(args.out, overwrite=args.overwrite)
    except DataError as err:
        print(f"vlmlens data synth: error: {err}", file=sys.stderr)
        return 2
    n_yes = sum(label == "yes" for label in ds.labels)
    print(
        f"SynthPOPE {ds.split}: {len(ds)} questions ({n_yes} yes / {len(ds) - n_yes} no) over "
        f"{len(ds.image_names)} images of {args.size}x{args.size} px, seed {args.seed}\n"
        f"  questions: {paths.questions_file}\n"
        f"  images:    {paths.image_dir}\n"
        f"  truth:     {paths.truth_file}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m vlmlens.data.cli data synth ...``."""
    parser = argparse.ArgumentParser(prog="vlmlens")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
