"""The fusion comparison: where the units behind answering sit, and how concentrated they are, model by model.

:func:`compare` runs the same search on several models (any mix of families) over the
same questions: rank units on one half of the images (:func:`~vlmlens.circuits.localize`),
ablate the top k on the other half against matched random units
(:func:`~vlmlens.circuits.ablation_curve`, k as counts and as fractions of the scored
units), ablate the top k within every layer (the effect by depth: the area under each
layer's curve), destroy growing fractions of the peak layer, and summarise
(:func:`~vlmlens.circuits.concentration`). Two statistics of the scores are bootstrapped
by image, with the same resampled images for every model so that differences are paired:

* **depth**: the centroid of the absolute score over normalised depth
  (``sum_l depth_l * mass_l / sum_l mass_l``, ``depth_l = l / (n_layers - 1)``);
* **top share**: the share of absolute score held by the top 1% of units.

Each model gets a 95% CI of both (basic bootstrap), each pair of models a CI of their
difference. An arm given under several training seeds (``name -> [model, ...]``) runs each
seed as its own model (``name#0``, ``name#1``, ...) and adds ``arms`` (each statistic's mean
and sd over seeds) and ``interactions``: per pair of arms with >= 2 seeds, the difference of
their mean depth, top share and accuracy drops with seeds as the unit of replication (the
model x intervention interaction; :mod:`vlmlens.circuits.seeds`).

Examples:
    >>> from vlmlens.testing import tiny_vlm
    >>> config = FusionConfig(n_images=4, ks=(1, 2), fractions=(), destroy=(0.5,), layer_ks=(1,), n_random=2,
    ...                       n_resamples=50)
    >>> result = compare({"a": tiny_vlm("llava"), "b": tiny_vlm("paligemma")}, config)
    >>> sorted(result["models"]), "a vs b" in result["differences"]
    (['a', 'b'], True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, no_type_check

import numpy as np

from vlmlens.circuits.behaviour import Behaviour
from vlmlens.circuits.localization import METHODS, Localization, localize
from vlmlens.circuits.seeds import compare_arms
from vlmlens.circuits.summary import concentration, top_one_percent_share
from vlmlens.circuits.units import KINDS
from vlmlens.circuits.validate import ablation_curve
from vlmlens.data import synth_pope
from vlmlens.errors import InputError

__all__ = ["FusionConfig", "compare", "effect_by_depth", "score_statistics"]


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """Settings of a fusion comparison.

    Attributes:
        n_images: SynthPOPE images (6 questions each), split in half by image: ranking / held out.
        split: the SynthPOPE split.
        seed: data, split, random controls and bootstraps.
        kind: the unit kind (``neuron``, ``mlp_out``, ``resid``, ``head``).
        method: the ranking method (``dla``, ``atp``, ``exact``, ``probe``).
        ks: top-k counts ablated.
        fractions: top-k as fractions of the scored units (added to ``ks``).
        destroy: fractions of the peak layer's units destroyed (ranked vs random).
        layer_ks: top-k within each layer, for the ablation effect by depth (``()``: skip).
        baseline: the ablation (``zero``, ``mean``, ``resample``).
        n_random: random control draws per k.
        n_resamples: bootstrap resamples of every CI.
        batch_size: questions per forward.
        suffix: append POPE's answer-format suffix to the questions.
    """

    n_images: int = 40
    split: Literal["random", "popular", "adversarial"] = "adversarial"
    seed: int = 0
    kind: str = "neuron"
    method: str = "dla"
    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    fractions: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05)
    destroy: tuple[float, ...] = (0.1, 0.25, 0.5)
    layer_ks: tuple[int, ...] = (1, 4, 16)
    baseline: str = "zero"
    n_random: int = 10
    n_resamples: int = 1000
    batch_size: int = 8
    suffix: bool = False

    @classmethod
    def quick(cls, **overrides: Any) -> FusionConfig:
        """The small settings of ``vlmlens circuits fusion --quick``: 12 images, k up to 16, 300 resamples."""
        return cls(**{"n_images": 12, "ks": (1, 2, 4, 8, 16), "fractions": (0.01, 0.02), "layer_ks": (1, 4),
                      "n_resamples": 300, **overrides})

    def __post_init__(self) -> None:
        if self.n_images < 4:
            raise InputError(f"n_images must be >= 4 (two per half), got {self.n_images}")
        if self.kind not in KINDS or self.method not in METHODS:
            raise InputError(f"kind must be one of {list(KINDS)} and method one of {list(METHODS)}, got "
                             f"{self.kind!r}, {self.method!r}")
        if not self.ks or any(k < 1 for k in (*self.ks, *self.layer_ks)):
            raise InputError(f"ks and layer_ks must be counts >= 1, got {self.ks}, {self.layer_ks}")
        if any(not 0 < f <= 1 for f in (*self.fractions, *self.destroy)):
            raise InputError(f"fractions and destroy must be in (0, 1], got {self.fractions}, {self.destroy}")


def _centroid(mass: np.ndarray, depths: np.ndarray) -> float:
    total = mass.sum()
    return float((mass * depths).sum() / total) if total > 0 else float("nan")


def score_statistics(found: Localization, pick: np.ndarray | None = None) -> tuple[float, float]:
    """``(depth centroid, top-1% share)`` of the scores, or of the scores re-averaged over images ``pick``."""
    if pick is None or found.by_image is None:
        scores = found.scores.numpy()
    else:
        counts = np.asarray(found.image_counts, dtype=float)
        scores = found.by_image.numpy()[pick].sum(0) / counts[pick].sum()
    depths = np.array([l / max(1, found.n_layers - 1) for l in found.layers])
    mass = np.abs(scores).sum(-1)
    return _centroid(mass, depths), top_one_percent_share(scores)


def effect_by_depth(curve: Any, n_layers: int) -> list[dict[str, Any]]:
    """Per layer: the mean accuracy drop and mean margin excess over its ``k`` (the area under
    the layer's ablation curve, ``k`` on an even log scale), at its normalised depth."""
    rows = []
    for layer in sorted({p.layer for p in curve.points}):
        points = [p for p in curve.points if p.layer == layer]
        rows.append({"layer": layer, "depth": layer / max(1, n_layers - 1), "ks": [p.k for p in points],
                     "mean_drop_pp": float(np.mean([p.drop_pp for p in points])),
                     "mean_excess": float(np.mean([p.excess for p in points])),
                     "smallest_p": float(min(p.mcnemar_p for p in points))})
    return rows


def _ci(point: float, values: np.ndarray) -> list[float]:
    """The basic (reverse-percentile) bootstrap interval: these statistics of |mean scores| are
    biased upwards in resamples (noise adds mass to weak units), which the basic interval undoes."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [math.nan, math.nan]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(2 * point - hi), float(2 * point - lo)]


@no_type_check
def compare(models: Mapping[str, Any], config: FusionConfig | None = None) -> dict[str, Any]:
    """Run the search on every model; a JSON-ready dict (``models``, ``differences``, ``config``).

    Args:
        models: name -> HookedVLM, or name -> the HookedVLMs of one recipe's training seeds.
        config: settings (default :class:`FusionConfig`).

    Raises:
        InputError: on fewer than one model or a bad config.
    """
    config = FusionConfig() if config is None else config
    if not models:
        raise InputError("compare needs at least one model")
    arms = {name: list(entry) if isinstance(entry, (list, tuple)) else [entry] for name, entry in models.items()}
    if any(not group for group in arms.values()):
        raise InputError(f"every arm needs at least one model; empty: {[n for n, g in arms.items() if not g]}")
    names_of = {name: [name] if len(group) == 1 else [f"{name}#{i}" for i in range(len(group))]
                for name, group in arms.items()}
    replicates = {r: model for name, group in arms.items() for r, model in zip(names_of[name], group, strict=True)}
    if len(replicates) != sum(map(len, arms.values())):
        raise InputError(f"model names collide with an arm's seed names (name#i): {list(models)}")
    questions = Behaviour.from_dataset(synth_pope(config.split, n_images=config.n_images, seed=config.seed),
                                       suffix=config.suffix)
    rank, held = questions.split(0.5, seed=config.seed)
    out: dict[str, Any] = {"config": dataclasses.asdict(config), "models": {}, "differences": {},
                           "ranked_on": rank.source, "evaluated_on": held.source}
    found_by: dict[str, Localization] = {}
    for name, model in replicates.items():
        found = localize(model, rank, kind=config.kind, method=config.method, k=1, baseline="zero" if
                         config.baseline == "resample" else config.baseline, batch_size=config.batch_size)
        units = found.scores.numel()
        counts = sorted({min(units, k) for k in config.ks})
        by_fraction = {f"{f:.1%}": max(1, round(f * units)) for f in config.fractions}
        ks = sorted({*counts, *by_fraction.values()})
        curve = ablation_curve(model, held, found, ks=ks, baseline=config.baseline, n_random=config.n_random,
                               seed=config.seed, batch_size=config.batch_size, n_resamples=config.n_resamples)
        summary = concentration(found, curve)
        mass = found.scores.abs().sum(-1)
        peak = found.layers[int(mass.argmax())]
        width = found.scores.shape[1]
        destroyed = ablation_curve(model, held, found, ks=sorted({max(1, round(f * width)) for f in config.destroy}),
                                   layers=[peak], baseline=config.baseline, n_random=config.n_random,
                                   seed=config.seed, batch_size=config.batch_size, n_resamples=config.n_resamples)
        by_depth = []
        if config.layer_ks:
            per_layer = ablation_curve(model, held, found, ks=config.layer_ks, layers=found.layers,
                                       baseline=config.baseline, n_random=config.n_random, seed=config.seed,
                                       batch_size=config.batch_size, n_resamples=config.n_resamples)
            by_depth = effect_by_depth(per_layer, model.n_layers)
        found_by[name] = found
        out["models"][name] = {
            "family": model.family, "n_layers": model.n_layers, "units": units, "peak_layer": peak,
            "ks": {"counts": counts, "fractions": by_fraction},
            "peak_depth": peak / max(1, model.n_layers - 1),
            "top_units": [{"layer": l, "index": i, "depth": l / max(1, model.n_layers - 1),
                           "score": float(found.scores[found.layers.index(l), i])} for l, i in found.top(16)],
            "concentration": dataclasses.asdict(summary),
            "ablation": curve.to_frame().to_dict(orient="records"),
            "destruction": [{**row, "fraction": row["k"] / width} for row in destroyed.to_frame().to_dict("records")],
            "by_depth": by_depth,
        }
    rng = np.random.default_rng([config.seed, 5])
    images = {len(f.image_counts) for f in found_by.values()}
    stats = {name: np.array([score_statistics(f)]) for name, f in found_by.items()}
    boot: dict[str, np.ndarray] = {}
    if len(images) == 1 and all(f.by_image is not None for f in found_by.values()):
        n = images.pop()
        picks = rng.integers(0, n, size=(config.n_resamples, n))  # the same images for every model: paired
        boot = {name: np.array([score_statistics(f, pick) for pick in picks]) for name, f in found_by.items()}
    for name, values in stats.items():
        row = out["models"][name]
        row["depth"], row["top_share"] = float(values[0, 0]), float(values[0, 1])
        if name in boot:
            row["depth_ci"] = _ci(row["depth"], boot[name][:, 0])
            row["top_share_ci"] = _ci(row["top_share"], boot[name][:, 1])
    names = list(found_by)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            entry = {"depth": out["models"][a]["depth"] - out["models"][b]["depth"],
                     "top_share": out["models"][a]["top_share"] - out["models"][b]["top_share"]}
            if a in boot and b in boot:
                diff = boot[a] - boot[b]
                entry["depth_ci"] = _ci(entry["depth"], diff[:, 0])
                entry["top_share_ci"] = _ci(entry["top_share"], diff[:, 1])
            out["differences"][f"{a} vs {b}"] = entry
    if any(len(group) > 1 for group in arms.values()):
        out |= compare_arms(out["models"], names_of)
    return out
