"""Which MLP neurons carry the yes/no answer, by several methods, checked on held-out images.

For each model: rank every MLP neuron (``mlp.hook_post``) on half of the images by each
method, keep the top k, and ablate the top 1 / 4 / 16 on the other half against matched
random neurons. Prints one line per model and method; writes ``results.json``.

    python circuits/reliability_neurons/run.py [--models ...] [--n-images 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import runpy
from pathlib import Path

from vlmlens import synth_pope
from vlmlens.circuits import Behaviour, ablation_curve, concentration, localize
from vlmlens.cli import load_model

Config = runpy.run_path(str(Path(__file__).with_name("config.py")))["Config"]  # this search's settings


def search(config: Config) -> dict:
    questions = Behaviour.from_dataset(synth_pope("adversarial", n_images=config.n_images, seed=config.seed))
    rank, held = questions.split(0.5, seed=config.seed)
    results = {"config": dataclasses.asdict(config), "models": {}}
    for name in config.models:
        model = load_model(name)
        per_method = {}
        for method in config.methods:
            found = localize(model, rank, kind="neuron", method=method, k=config.k,
                             target="correct")
            curve = ablation_curve(model, held, found, ks=config.ks, n_random=config.n_random, seed=config.seed,
                                   n_resamples=config.n_resamples, progress=False)
            summary = concentration(found, curve)
            per_method[method] = {
                "top": [{"layer": l, "neuron": i, "depth": l / max(1, model.n_layers - 1)} for l, i in found.chosen],
                "mean_depth": float(found.depth().mean()),
                "points": curve.to_frame().to_dict(orient="records"),
                "top_share": summary.top_share, "k_at_drop": summary.k_at_drop,
                "concentrated": summary.concentrated,
            }
            last = curve.points[-1]
            print(f"{name:14s} {method:5s} depth {per_method[method]['mean_depth']:.2f}  "
                  f"top-{last.k} drop {last.drop_pp:5.1f} pp {tuple(round(c, 1) for c in last.drop_ci)} "
                  f"(McNemar p={last.mcnemar_p:.3g}), random {100 * (last.accuracy_clean - last.accuracy_random):5.1f}"
                  f" pp, excess margin {last.excess:+.2f} (p={last.excess_p:.3g}), "
                  f"concentrated: {summary.concentrated}")
        results["models"][name] = {"family": model.family, "n_layers": model.n_layers, "methods": per_method}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=None)
    parser.add_argument("--n-random", type=int, default=None)
    parser.add_argument("--n-resamples", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = vars(parser.parse_args(argv))
    overrides = {key: tuple(v) if isinstance(v, list) else v for key, v in args.items() if v is not None}
    config = dataclasses.replace(Config(), **overrides)
    results = search(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
