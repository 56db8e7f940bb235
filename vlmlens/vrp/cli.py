"""``vlmlens reproduce``: the VRP measurements on the toy zoo over SynthPOPE (the main job)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmlens.vrp.pipeline import VRPConfig, run_samples, summarize

__all__ = ["add_parser", "run", "reproduce", "PAPER"]

DEFAULT_MODELS = ("toy-llava", "toy-paligemma", "toy-qwen2vl")

# The paper's headline values (VRP.md), shown beside ours in summary.md.
PAPER = {
    "rpb_C_k": "0.001 [-0.034, 0.036], n=3090",
    "rpb_H_s": "-0.012 [-0.047, 0.024], n=3090",
    "mask_top": "8.2-11.3 pp drop (p<0.001)",
    "probe": "AUROC 0.956 / 0.944 / 0.971 (best layer)",
    "peak_visual_layer": "LLaVA L31, PaliGemma L14, Qwen2-VL L27",
}


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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    return p


def _load_model(name: str) -> Any:
    if name.startswith("tiny-"):
        from vlmlens.testing import tiny_vlm

        return tiny_vlm(name.removeprefix("tiny-"))
    from vlmlens.model import HookedVLM

    return HookedVLM.from_pretrained(name)


def _dataset(args: argparse.Namespace, n_images: int) -> Any:
    from vlmlens.data import load_pope, synth_pope

    if args.pope is not None:
        if args.images is None:
            raise SystemExit("--pope needs --images DIR (the folder holding the question file's images)")
        return load_pope(args.pope, args.images).subset(n_images * 6)
    return synth_pope(args.split, n_images, seed=args.seed)


def reproduce(args: argparse.Namespace) -> dict[str, Any]:
    """Run every model, write results.json and summary.md into ``args.out``; return the results."""
    n_images = args.n if args.n is not None else (10 if args.quick else 100)
    config = VRPConfig(batch_size=args.batch_size, seed=args.seed)
    dataset = _dataset(args, n_images)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": {"n_images": n_images, "split": args.split, "seed": args.seed,
                                          "mask_fraction": config.mask_fraction}, "models": {}}
    for name in args.models:
        folder = args.out / name.replace("/", "__")
        model = _load_model(name)
        run_samples(model, dataset, config, folder, resume=args.resume or not (folder / "samples.csv").exists(),
                    name=name)
        results["models"][name] = {"family": model.family, "n_layers": model.n_layers, **summarize(folder, config)}
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (args.out / "summary.md").write_text(summary_markdown(results))
    return results


def summary_markdown(results: dict[str, Any]) -> str:
    """A table in the shape of the paper's headline table: ours (CI, n) beside the paper's."""
    lines = ["# VRP summary", "", f"Config: {json.dumps(results['config'])}", "",
             "| measurement | model | ours | paper |", "|---|---|---|---|"]
    for name, r in results["models"].items():
        pope = r["pope"]
        lines.append(f"| POPE accuracy (yes-ratio) | {name} | {pope['accuracy']:.3f} ({pope['yes_ratio']:.3f}), "
                     f"n={r['n']} | - |")
        for key in ("rpb_C_k", "rpb_H_s"):
            c = r.get(key)
            ours = (f"{c['r']:.3f} [{c['fisher_ci'][0]:.3f}, {c['fisher_ci'][1]:.3f}], n={c['n']}"
                    if c else "undefined (constant)")
            lines.append(f"| R_pb({key[4:]}, correct) | {name} | {ours} | {PAPER[key]} |")
        m = r["masking"]["top"]
        lines.append(f"| top-30% patch masking drop | {name} | {m['drop_pp']:.1f} pp (McNemar p={m['p_value']:.3g}), "
                     f"n={m['n']}; bottom {r['masking']['bottom']['drop_pp']:.1f}, random "
                     f"{r['masking']['random']['drop_pp']:.1f} | {PAPER['mask_top']} |")
        if "probe" in r:
            best = r["probe"]["best_layer"]
            row = r["probe"]["by_layer"][best]
            auroc = {k: v for k, v in row.items() if "auroc" in k}
            lines.append(f"| probe AUROC, best layer | {name} | L{best}: {json.dumps(auroc)} | {PAPER['probe']} |")
        lines.append(f"| peak visual layer | {name} | L{r['peak_visual_layer']} of {r['n_layers']} | "
                     f"{PAPER['peak_visual_layer']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    results = reproduce(args)
    print((args.out / "summary.md").read_text())
    print(f"wrote {args.out / 'results.json'} and per-model samples.csv for {len(results['models'])} model(s)")
    return 0
