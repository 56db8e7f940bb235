"""``vlmlens reproduce``: every VRP measurement on the toy zoo over SynthPOPE (the main job).

Writes into ``--out``: ``results.json`` (every number), ``per_sample.csv`` (one row per
model and question), ``summary.md`` (the paper's headline table with ours beside it),
``report.html`` (self-contained figures) and one store folder per model (its per-sample
tables and feature shards, which ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from vlmlens.cli import add_model_arguments

__all__ = ["DEFAULT_MODELS", "add_parser", "reproduce", "run"]

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("toy-llava", "toy-paligemma", "toy-qwen2vl")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("reproduce", help="run the VRP measurements (default: toy zoo on SynthPOPE adversarial)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                   help="zoo names, checkpoint paths or hub ids (tiny-<family> = random tiny model)")
    p.add_argument("--quick", action="store_true", help="a small subset (10 images = 60 questions per model)")
    p.add_argument("--n", type=int, default=None, help="images per model (default 100; --quick: 10)")
    p.add_argument("--split", default="adversarial", choices=["random", "popular", "adversarial"])
    p.add_argument("--pope", type=Path, default=None, help="a POPE question file (instead of SynthPOPE)")
    p.add_argument("--images", type=Path, default=None, help="image folder for --pope")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--config", type=Path, default=None,
                   help="a JSON object of VRPConfig settings (nested objects change only the keys they name), or "
                        "a results.json whose VRPConfig settings to reuse (not its models, images or split); "
                        "the flags below override it where given")
    p.add_argument("--batch-size", type=int, default=None, help="questions per forward (default 8)")
    p.add_argument("--seed", type=int, default=None, help="seeds the data, masks, sampling, probes (default 0)")
    p.add_argument("--suffix", action=argparse.BooleanOptionalAction, default=None,
                   help="append POPE's 'Answer the question using a single word or phrase.' to questions "
                        "(default: on for real checkpoints, off for the zoo toys, which were trained mostly without)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens decoded per answer (default: 3 for the zoo toys, 10 for real checkpoints, whose "
                        "answers can start 'There is no ...')")
    p.add_argument("--resamples", type=int, default=None,
                   help="bootstrap resamples of every CI (default 1000; --quick: 200)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default 2: 1.4-1.5x faster than 1 on an idle 2-core machine; pass 1 "
                        "when other jobs share the cores, where 2 threads are several times slower)")
    p.add_argument("--no-interventions", action="store_true", help="skip neuron ablation and dimension destruction")
    p.add_argument("--identify", action="store_true",
                   help="also score the neuron ablation on object identification (the paper's readout): each image "
                        "is asked 'What objects are in the image?', clean and under each reported-k ablation")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--ray-workers", type=int, default=None,
                   help="spread each model's batches over this many Ray actors, one model replica each "
                        "(pip install 'vlmlens[ray]'; --threads torch threads per actor)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs each Ray actor reserves (default: 1 with --device cuda, else 0)")
    add_model_arguments(p)
    return p



def _dataset(args: argparse.Namespace, n_images: int, seed: int) -> Any:
    from vlmlens.data import load_pope, synth_pope

    if args.pope is not None:
        if args.images is None:
            raise SystemExit("--pope needs --images DIR (the folder holding the question file's images)")
        dataset = load_pope(args.pope, args.images)
        kept = set(dataset.image_names[:n_images])  # every question of the first n images (POPE asks 6 each)
        return dataset.select([i for i, item in enumerate(dataset.items) if item.image in kept])
    return synth_pope(args.split, n_images, seed=seed)


RUN_KEYS = ("n_images", "n_questions", "split", "dataset")
"""Keys of results.json's ``config`` that describe the run, not VRPConfig settings."""


def _config_file(path: Path | None) -> dict[str, Any]:
    """The settings in ``--config``: a JSON object of VRPConfig settings, or a results.json."""
    from vlmlens.errors import DataError

    if path is None:
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"--config {path}: cannot read a JSON object ({err}).") from err
    if not isinstance(values, dict):
        raise DataError(f"--config {path}: expected a JSON object of settings, got {type(values).__name__}.")
    if "models" in values and "config" in values:  # a results.json: reuse its run's settings
        values = {k: v for k, v in values["config"].items() if k not in RUN_KEYS}
    return values


def _config(args: argparse.Namespace) -> Any:
    """The run's VRPConfig: defaults, then ``--config``, then the flags given (real checkpoints get POPE's)."""
    from vlmlens.cli import is_toy
    from vlmlens.vrp.config import VRPConfig

    values = _config_file(getattr(args, "config", None))
    real = not all(is_toy(name) for name in getattr(args, "models", ()))  # a real checkpoint among the models
    values.setdefault("suffix", real)
    for section in ("consistency", "identify"):  # a non-object is left for from_dict to refuse in its words
        values[section] = dict(values.get(section, {})) if isinstance(values.get(section, {}), dict) else values[section]
    if isinstance(values["consistency"], dict):
        values["consistency"].setdefault("max_new_tokens", 10 if real else 3)
    flags = {"batch_size": getattr(args, "batch_size", None), "seed": getattr(args, "seed", None),
             "n_resamples": getattr(args, "resamples", None), "suffix": getattr(args, "suffix", None)}
    if args.quick and flags["n_resamples"] is None:
        flags["n_resamples"] = 200
    values.update({key: value for key, value in flags.items() if value is not None})
    if getattr(args, "max_new_tokens", None) is not None:
        values["consistency"]["max_new_tokens"] = args.max_new_tokens
    if getattr(args, "no_interventions", False):
        values["interventions"] = False
    if getattr(args, "identify", False):
        values["identify"]["enabled"] = True
    return VRPConfig.from_dict(values)


POOLED = ("C_k", "H_s_norm")
"""Measurements pooled over families: scale-free ones only (H_s in nats depends on the grid)."""


def _pooled(frames: dict[str, pd.DataFrame], config: Any) -> dict[str, Any]:
    """Meta-analytic R_pb of C_k and normalised H_s over the models (the paper's pooled row).

    Each model keeps its own R_pb; see :mod:`vlmlens.vrp.pooling`.
    """
    from vlmlens.errors import DataError
    from vlmlens.vrp.analysis import to_jsonable
    from vlmlens.vrp.pooling import pool_correlations

    if len(frames) < 2:
        return {}
    out: dict[str, Any] = {}
    for column in POOLED:
        try:
            out[column] = to_jsonable(pool_correlations(frames, column, n_resamples=config.n_resamples,
                                                        seed=config.seed))
        except DataError as err:
            out[column] = f"undefined: {err}"
    return out


def reproduce(args: argparse.Namespace) -> dict[str, Any]:
    """Run every model; write results.json, per_sample.csv, summary.md and report.html into ``args.out``.

    Returns:
        The contents of ``results.json``.
    """
    import torch

    from vlmlens.cli import load_model
    from vlmlens.ray_pool import RayConfig
    from vlmlens.vrp.analysis import to_jsonable
    from vlmlens.vrp.headline import summary_markdown
    from vlmlens.vrp.runner import run as run_vrp
    from vlmlens.vrp.runner import run_ray as run_vrp_ray

    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    n_images = args.n if args.n is not None else (10 if args.quick else 100)
    config = _config(args)
    dataset = _dataset(args, n_images, config.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": {"n_images": n_images, "n_questions": len(dataset), "split": args.split,
                   "dataset": str(args.pope) if args.pope else "SynthPOPE", **config.to_dict()},
        "models": {},
    }
    frames, datasets, timings = {}, {}, {}
    for name in args.models:
        start = time.perf_counter()
        folder = args.out / name.replace("/", "__")
        loader = functools.partial(load_model, name, dtype=getattr(args, "dtype", None),
                                   device=getattr(args, "device", None), device_map=getattr(args, "device_map", None))
        resume = args.resume or not (folder / "samples.csv").exists()
        workers = getattr(args, "ray_workers", None)
        if workers:
            gpus = getattr(args, "gpus_per_worker", None)
            cuda = str(getattr(args, "device", None) or "").startswith("cuda")
            ray = RayConfig(workers=workers, gpus_per_worker=(1.0 if cuda else 0.0) if gpus is None else gpus,
                            cpus_per_worker=threads or 1, threads=threads or None)
            result = run_vrp_ray(loader, dataset, config, out=folder, name=name, resume=resume, ray=ray)
        else:
            result = run_vrp(loader(), dataset, config, out=folder, name=name, resume=resume)
        results["models"][name] = result.results
        frames[name] = result.samples.drop(columns=["attention_map"]).copy().assign(model=name)  # copy: one block per dtype
        datasets[name] = dataset
        timings[name] = round(time.perf_counter() - start, 1)
        logger.info("VRP %s done in %.1f s", name, timings[name])
        _write_json(args.out / "results.json", results)
    results["pooled"] = _pooled(frames, config)
    _write_json(args.out / "results.json", results)
    table = pd.concat(frames.values(), ignore_index=True)
    table[["model", *[c for c in table.columns if c != "model"]]].to_csv(args.out / "per_sample.csv", index=False)
    summary = summary_markdown(results, pooled=results["pooled"])
    (args.out / "summary.md").write_text(summary)
    if not getattr(args, "no_report", False):
        from vlmlens.viz.report import write_report

        write_report(args.out / "report.html", results, summary=summary, datasets=datasets)
    _write_json(args.out / "timings.json", timings)  # kept out of results.json: it differs run to run
    return to_jsonable(results)


def _write_json(path: Path, value: Any) -> None:
    from vlmlens.vrp.analysis import to_jsonable

    path.write_text(json.dumps(to_jsonable(value), indent=1, allow_nan=False))


def run(args: argparse.Namespace) -> int:
    from vlmlens.errors import VLMLensError

    try:
        results = reproduce(args)
    except VLMLensError as err:
        print(f"vlmlens reproduce: {err}", file=sys.stderr)
        return 2
    print((args.out / "summary.md").read_text())
    written = ["results.json", "per_sample.csv", "summary.md"] + ([] if args.no_report else ["report.html"])
    print(f"wrote {', '.join(str(args.out / w) for w in written)} for {len(results['models'])} model(s)")
    return 0
