"""``vlmlens circuits fusion``: the fusion comparison on several models, written to ``--out``.

Writes ``results.json`` (every number), ``summary.md`` (the per-model table and pairwise
differences with CIs) and ``report.html`` (depth profiles, ablation and destruction curves).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmlens.cli import add_model_arguments
from vlmlens.errors import InputError

__all__ = ["add_parser", "load_arms", "model_groups", "run"]

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("toy-llava", "toy-paligemma", "toy-qwen2vl")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("circuits", help="circuit searches: the fusion comparison")
    sub = p.add_subparsers(dest="circuits_command", required=True)
    f = sub.add_parser("fusion", help="where the units behind answering sit and how concentrated they are, per model")
    f.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                   help="zoo names, checkpoint paths or hub ids (tiny-<family> = random tiny model); "
                        "ARM=SRC,SRC,... gives one arm's training seeds (tested across seeds)")
    f.add_argument("--quick", action="store_true", help="12 images, k up to 16, 10 random draws, 300 resamples")
    f.add_argument("--n-images", type=int, default=None, help="SynthPOPE images (default 40; --quick: 12)")
    f.add_argument("--kind", default="neuron", choices=["neuron", "mlp_out", "resid", "head"])
    f.add_argument("--method", default="dla", choices=["dla", "atp", "exact", "probe"])
    f.add_argument("--baseline", default="zero", choices=["zero", "mean", "resample"])
    f.add_argument("--split", default="adversarial", choices=["random", "popular", "adversarial"])
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, default=Path("runs/fusion"))
    f.add_argument("--threads", type=int, default=None, help="torch threads")
    add_model_arguments(f)
    return p


def model_groups(entries: Sequence[str]) -> dict[str, list[str]]:
    """``--models`` entries as arm -> sources: ``NAME`` is one model, ``ARM=SRC,SRC,...`` one arm's seeds.

    Examples:
        >>> model_groups(["toy-llava", "native=runs/q0,runs/q1"])
        {'toy-llava': ['toy-llava'], 'native': ['runs/q0', 'runs/q1']}
    """
    groups: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, sources = entry.partition("=")
        found = [s for s in sources.split(",") if s] if sep else [entry]
        if not name or not found or name in groups:
            raise InputError(f"bad --models entry {entry!r}: give NAME or ARM=SRC,SRC,... with distinct names "
                             "(e.g. late=runs/llava-s0,runs/llava-s1)")
        groups[name] = found
    return groups


def load_arms(entries: Sequence[str], **load: Any) -> dict[str, Any]:
    """The models of :func:`model_groups`: arm -> a HookedVLM, or the list of its seeds' HookedVLMs."""
    from vlmlens.cli import load_model

    groups = model_groups(entries)
    return {name: [load_model(s, **load) for s in sources] if len(sources) > 1 else load_model(sources[0], **load)
            for name, sources in groups.items()}


def config_of(args: argparse.Namespace) -> Any:
    """The :class:`~vlmlens.circuits.fusion.FusionConfig` the arguments ask for."""
    from vlmlens.circuits.fusion import FusionConfig

    chosen = {"split": args.split, "seed": args.seed, "kind": args.kind, "method": args.method,
              "baseline": args.baseline, **({"n_images": args.n_images} if args.n_images else {})}
    return FusionConfig.quick(**chosen) if args.quick else FusionConfig(**chosen)


def run(args: argparse.Namespace) -> int:
    import torch

    from vlmlens.circuits.fusion import compare
    from vlmlens.viz.circuits import fusion_summary_markdown, write_fusion_report
    from vlmlens.vrp.analysis import to_jsonable

    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_of(args)
    models = load_arms(args.models, dtype=args.dtype, device=args.device, device_map=args.device_map)
    result = compare(models, config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(to_jsonable(result), indent=1, allow_nan=False))
    (args.out / "summary.md").write_text(fusion_summary_markdown(result))
    write_fusion_report(args.out / "report.html", result)
    logger.info("fusion comparison written to %s", args.out)
    return 0
