"""``vlmlens zoo``: list, train and evaluate the toy models.

The top-level ``vlmlens`` command dispatches ``vlmlens zoo ...`` here::

    vlmlens zoo list
    vlmlens zoo train --family llava --out DIR --seed 0 [--steps N] [--threads 1] [--version 2|1]
    vlmlens zoo eval toy-llava --split adversarial [--n-images 500] [--seed 0]
    vlmlens zoo card toy-llava [--n-images 100]
    vlmlens zoo report DIR --out docs/zoo [--name toy-llava-v2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from vlmlens.errors import VLMLensError
from vlmlens.zoo.errors import ZooError

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``zoo`` command to an ``argparse`` subparsers object.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``zoo`` parser (its ``func`` default is :func:`run`).
    """
    parser = subparsers.add_parser("zoo", help="the toy models shipped with vlmlens")
    sub = parser.add_subparsers(dest="zoo_command", required=True)

    sub.add_parser("list", help="list the zoo's models")

    p_train = sub.add_parser("train", help="train a toy model from scratch on SynthPOPE")
    p_train.add_argument("--family", required=True, choices=["llava", "paligemma", "qwen2_vl"])
    p_train.add_argument("--out", required=True, help="checkpoint folder to write")
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--steps", type=int, default=None, help="main-stage steps (default: the recipe's)")
    p_train.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p_train.add_argument(
        "--version",
        type=int,
        default=2,
        choices=[2, 1],
        help="zoo recipe: 2 = the fusion experiment, the default toys (vlmlens.zoo.fusion); "
        "1 = the shared-recipe toys toy-*-v1",
    )
    p_train.add_argument(
        "--restart",
        action="store_true",
        help="version 2: discard the snapshot a killed run left in --out and start over "
        "(by default the same command resumes it)",
    )

    _test_arguments(sub.add_parser("eval", help="POPE metrics of a zoo model on a SynthPOPE split"), 500)
    _test_arguments(sub.add_parser("card", help="where a zoo model's answer forms: logit-lens margins, MLP "
                                               "zeroing per block"), 100)
    p_report = sub.add_parser("report", help="a zoo v2 checkpoint's model card: test metrics on the three splits, "
                                             "layer profile, recipe (writes NAME.md and NAME.json)")
    p_report.add_argument("model", help="zoo name or checkpoint folder (zoo v2)")
    p_report.add_argument("--out", required=True, help="folder for the card (e.g. docs/zoo)")
    p_report.add_argument("--name", default=None, help="card name (default: the model's name or folder name)")
    p_report.add_argument("--n-images", type=int, default=500, help="test scenes per split (default 500)")
    p_report.add_argument("--profile-images", type=int, default=100, help="test scenes for the layer profile "
                                                                         "(default 100)")
    p_report.add_argument("--seed", type=int, default=0, help="SynthPOPE seed of the test scenes")

    parser.set_defaults(func=run)
    return parser


def _test_arguments(p: argparse.ArgumentParser, n_images: int) -> None:
    """The model and its SynthPOPE test questions, for the commands that measure a checkpoint."""
    p.add_argument("model", help="zoo name (e.g. toy-llava) or checkpoint folder")
    p.add_argument("--split", default="adversarial", choices=["adversarial", "popular", "random"])
    p.add_argument("--n-images", type=int, default=n_images, help=f"test images (6 questions each; default {n_images})")
    p.add_argument("--seed", type=int, default=0, help="SynthPOPE seed of the test set")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``vlmlens zoo`` command.

    Args:
        args: Parsed arguments from the parser built by :func:`add_parser`.

    Returns:
        The exit status: 0 on success, 2 on a vlmlens error (the message is printed).
    """
    try:
        if args.zoo_command == "list":
            return _list()
        if args.zoo_command == "train":
            return _train(args)
        if args.zoo_command == "eval":
            return _eval(args)
        if args.zoo_command == "card":
            return _card(args)
        if args.zoo_command == "report":
            return _report(args)
    except VLMLensError as exc:
        print(f"error: {exc}")
        return 2
    print(f"error: unknown zoo command {args.zoo_command!r}")
    return 2


def _list() -> int:
    from vlmlens.zoo.io import read_meta
    from vlmlens.zoo.registry import ALIASES, ZOO, checkpoint_path

    default_of = {v: k for k, v in ALIASES.items()}
    for name, e in ZOO.items():
        try:
            meta = read_meta(checkpoint_path(name))
            params = f"{meta.get('n_params', 0) / 1e6:.2f}M params"
        except VLMLensError:
            params = "checkpoint missing"
        alias = f"(= {default_of[name]})" if name in default_of else ""
        print(f"{name:18s} {alias:17s} {e.architecture:36s} {params:18s} {e.description}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from vlmlens.zoo.fusion import train_fusion
    from vlmlens.zoo.train import train

    if args.version == 2:
        result = train_fusion(
            args.family, args.out, seed=args.seed, steps=args.steps, threads=args.threads, restart=args.restart
        )
    elif args.restart:
        raise ZooError("--restart applies to --version 2 runs (the version 1 recipe keeps no snapshots).")
    else:
        result = train(args.family, args.out, seed=args.seed, steps=args.steps, threads=args.threads)
    print(
        f"trained {result.family} ({result.n_params / 1e6:.2f}M params) in {result.seconds:.0f} s "
        f"with {result.threads} thread(s); final loss {result.final_loss:.3f}; saved to {result.out}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vlmlens.zoo.evaluate import evaluate

    metrics = evaluate(args.model, args.split, n_images=args.n_images, seed=args.seed)
    if args.json:
        print(json.dumps({"model": args.model, "split": args.split, **metrics.to_dict()}, indent=2))
    else:
        print(f"{args.model} {args.split}: {metrics}")
    return 0


def _card(args: argparse.Namespace) -> int:
    from vlmlens.zoo.card import layer_profile

    profile = layer_profile(args.model, args.split, n_images=args.n_images, seed=args.seed)
    print(json.dumps(profile.to_dict(), indent=2) if args.json else profile.to_markdown())
    return 0


def _report(args: argparse.Namespace) -> int:
    from vlmlens.zoo.report import measure_card

    card = measure_card(args.model, name=args.name, n_images=args.n_images, profile_images=args.profile_images,
                        seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{card.name}.md").write_text(card.to_markdown())
    (out / f"{card.name}.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    print(f"wrote {out / card.name}.md and .json: adversarial accuracy {card.metrics['adversarial'].accuracy:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m vlmlens.zoo.cli list``."""
    parser = argparse.ArgumentParser(prog="vlmlens")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["zoo", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
