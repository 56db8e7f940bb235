"""Causal validation: ablate the top-k units on held-out questions, against matched random units.

:func:`ablation_curve` takes a :class:`~vlmlens.circuits.localization.Localization` made on
one set of images and a :class:`~vlmlens.circuits.behaviour.Behaviour` of other images,
and for each ``k`` ablates the top ``k`` units at the last prompt position, and
``n_random`` random sets drawn to match them: the same number of units in each layer, each
from the same quintile of mean activation magnitude in its layer (measured on the
evaluation questions' clean runs). Read-outs per question: correct (truth margin > 0),
the truth margin's change, and whether the answer flipped.

Tests, per ``k``: exact McNemar of top-k vs the clean run (accuracy drop), and top-k vs
random on the per-question margin change (top minus the mean of the random draws): a
sign-flip permutation test and a bootstrap CI, both by image (questions about one image
move together). ``n_random`` draws, images and questions are reported; p-values are not
corrected for the number of ``k`` tested (say so where they are read together).

Examples:
    >>> from vlmlens.testing import tiny_vlm
    >>> from vlmlens.data import synth_pope
    >>> from vlmlens.circuits import localize
    >>> model = tiny_vlm("llava")
    >>> rank, held_out = Behaviour.from_dataset(synth_pope("adversarial", n_images=4, seed=0)).split()
    >>> found = localize(model, rank, kind="neuron", method="dla", k=4)
    >>> curve = ablation_curve(model, held_out, found, ks=(1, 4), n_random=2, n_resamples=50)
    >>> [p.k for p in curve.points]
    [1, 4]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, no_type_check

import numpy as np
import pandas as pd
import torch

from vlmlens.circuits.behaviour import AnswerIds, Behaviour
from vlmlens.circuits.localization import Localization
from vlmlens.circuits.units import ablation, per_unit, read_units
from vlmlens.errors import InputError
from vlmlens.ops.sweep import sweep
from vlmlens.progress import progress_bar
from vlmlens.vrp.stats import cluster_bootstrap_ci, cluster_sign_flip_p, mcnemar_exact

__all__ = ["AblationCurve", "AblationPoint", "ablation_curve", "matched_random"]

N_BINS = 5
"""Magnitude bins per layer (quintiles) that random controls are matched on."""


@dataclass(frozen=True, kw_only=True)
class AblationPoint:
    """Ablating the top ``k`` units vs matched random units, on held-out questions.

    Attributes:
        k: units ablated.
        layer: the layer they were taken from (``None``: the top ``k`` of all scored layers).
        accuracy_clean: share answered correctly without ablation.
        accuracy_top: with the top ``k`` ablated.
        accuracy_random: with random units ablated (mean over draws).
        drop_pp: ``100 * (accuracy_clean - accuracy_top)``.
        drop_ci: its bootstrap CI, resampling images.
        mcnemar_p: exact McNemar p of top-k vs clean.
        margin_change_top: mean change of the truth margin (negative = towards wrong).
        margin_change_random: the same for random units (mean over draws and questions).
        excess: mean over questions of (top change - random change): the top units' effect
            beyond matched random units.
        excess_ci: its bootstrap CI, resampling images.
        excess_p: its sign-flip permutation p-value, by image.
        flips_top: share of answers that flip with the top ``k`` ablated.
        flips_random: the same for random units (mean over draws).
        n: questions; ``n_images``: images; ``n_random``: random draws.
    """

    k: int
    layer: int | None
    accuracy_clean: float
    accuracy_top: float
    accuracy_random: float
    drop_pp: float
    drop_ci: tuple[float, float]
    mcnemar_p: float
    margin_change_top: float
    margin_change_random: float
    excess: float
    excess_ci: tuple[float, float]
    excess_p: float
    flips_top: float
    flips_random: float
    n: int
    n_images: int
    n_random: int


@dataclass(frozen=True, kw_only=True)
class AblationCurve:
    """One :class:`AblationPoint` per ``k`` (and layer), with what was ranked and evaluated.

    Attributes:
        points: the points, in the order of ``ks`` (and layers).
        kind: the unit kind.
        method: the ranking method.
        baseline: ``zero``, ``mean`` or ``resample``.
        ranked_on: the ranking questions (the localization's provenance).
        evaluated_on: the held-out questions' source.
    """

    points: tuple[AblationPoint, ...]
    kind: str
    method: str
    baseline: str
    ranked_on: dict[str, Any] = field(default_factory=dict)
    evaluated_on: str = ""

    def to_frame(self) -> pd.DataFrame:
        """One row per point."""
        return pd.DataFrame([asdict(p) for p in self.points])


def matched_random(found: Localization, units: Sequence[tuple[int, int]], magnitude: dict[int, np.ndarray],
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random units matched to ``units``: same layer, same magnitude quintile, none of ``units``.

    Where a quintile has run out, the nearest quintile with units left gives one.
    """
    taken = set(units)
    picked: list[tuple[int, int]] = []
    for layer, index in units:
        mags = magnitude[layer]
        edges = np.quantile(mags, np.linspace(0, 1, N_BINS + 1)[1:-1])
        bins = np.searchsorted(edges, mags, side="right")
        free = [i for i in range(len(mags)) if (layer, i) not in taken]
        if not free:
            raise InputError(f"layer {layer} has no units left to draw a random control from; lower k")
        want = bins[index]
        nearest = min(abs(int(bins[i]) - int(want)) for i in free)
        pool = [i for i in free if abs(int(bins[i]) - int(want)) == nearest]
        choice = int(rng.choice(pool))
        taken.add((layer, choice))
        picked.append((layer, choice))
    return picked


def _by_layer(units: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, index in units:
        out.setdefault(layer, []).append(index)
    return out


def _donors(groups: Sequence[str], seed: int) -> np.ndarray:
    """For each question, another question about a different image (resample ablation)."""
    rng = np.random.default_rng([seed, 7])
    groups = np.asarray(groups)
    if len(set(groups.tolist())) < 2:
        raise InputError("resample ablation needs questions about at least two images")
    return np.array([int(rng.choice(np.flatnonzero(groups != g))) for g in groups])


@no_type_check
def ablation_curve(model: Any, behaviour: Behaviour, found: Localization, *, ks: Sequence[int] = (1, 2, 4, 8, 16),
                   layers: Sequence[int] | None = None, baseline: str = "zero", n_random: int = 10, seed: int = 0,
                   batch_size: int = 8, chunk_size: int = 16, n_resamples: int = 1000,
                   progress: bool | None = None) -> AblationCurve:
    """Ablate the top ``k`` units of ``found`` on held-out questions, against matched random units.

    Args:
        model: the HookedVLM the units were found in.
        behaviour: held-out questions (other images than the ranking's: ``Behaviour.split``).
        found: from :func:`~vlmlens.circuits.localization.localize`.
        ks: how many units to ablate (each ``k`` capped at the units available).
        layers: ``None``: the top ``k`` of all scored layers; else a curve per listed layer,
            the top ``k`` within it.
        baseline: ``"zero"``, ``"mean"`` (each unit's mean over these questions' last
            positions) or ``"resample"`` (its value on a question about another image).
        n_random: random control draws per ``k`` (>= 10 for a reportable test).
        seed: seeds the random controls and resample donors.
        batch_size: questions per forward.
        chunk_size: conditions per stacked forward.
        n_resamples: bootstrap resamples of each CI.
        progress: a progress bar over batches (``None``: from 8 batches).

    Returns:
        An :class:`AblationCurve`.

    Raises:
        InputError: shared images between ranking and evaluation questions, a bad baseline,
            ``n_random < 1`` or no ``k``.
    """
    if baseline not in ("zero", "mean", "resample"):
        raise InputError(f"baseline must be 'zero', 'mean' or 'resample', got {baseline!r}")
    if n_random < 1 or not ks:
        raise InputError(f"need n_random >= 1 and at least one k, got n_random={n_random}, ks={list(ks)}")
    shared = set(found.provenance.get("images", ())) & set(behaviour.groups)
    if shared:
        raise InputError(f"{len(shared)} images were used both to rank and to evaluate (e.g. {min(shared)!r}); "
                         "evaluate on other images: rank, held_out = behaviour.split()")
    answers = AnswerIds.of(model)
    scored = found.layers
    targets = [None] if layers is None else [int(l) for l in layers]
    for layer in targets:
        if layer is not None and layer not in scored:
            raise InputError(f"layer {layer} was not scored by the localization (scored: {list(scored)})")

    # Clean pass: margins, and each unit's activation (magnitudes, means, resample donors).
    clean_margin, acts = [], {l: [] for l in scored}
    for _, batch in behaviour.batches(model, batch_size):
        logits, per_layer = read_units(model, batch, found.kind, scored)
        clean_margin.append(answers.margin(logits, batch).cpu())
        for layer in scored:
            acts[layer].append(per_layer[layer].cpu())
    acts = {l: torch.cat(v) for l, v in acts.items()}
    magnitude = {l: per_unit(a.abs(), found.kind).mean(0).numpy() for l, a in acts.items()}
    means = {l: a.mean(0) for l, a in acts.items()}
    donors = _donors(behaviour.groups, seed) if baseline == "resample" else None

    rng = np.random.default_rng([seed, 11])
    plan = []  # (k, layer, top units, [random unit sets])
    for layer in targets:
        available = len(found.ranked(layer))
        for k in ks:
            kk = min(int(k), available)
            top = found.top(kk, layer)
            plan.append((kk, layer, top, [matched_random(found, top, magnitude, rng) for _ in range(n_random)]))
    unit_sets = [u for _, _, top, randoms in plan for u in (top, *randoms)]

    margins = []
    for rows, batch in progress_bar(behaviour.batches(model, batch_size), total=math.ceil(len(behaviour) / batch_size),
                                    desc="ablation curve", unit="batch", progress=progress):
        index = list(rows)
        donor_acts = None if donors is None else {l: acts[l][donors[index]] for l in scored}
        conditions = [ablation(found.kind, _by_layer(units), baseline, batch=batch, means=means, donors=donor_acts)
                      for units in unit_sets]
        margins.append(sweep(model, batch, conditions, chunk_size=chunk_size, progress=False,
                             reduce=lambda logits, b: answers.margin(logits, b)))  # condition batch
    margins = torch.cat(margins, 1).numpy()
    sign = behaviour.truth_sign.numpy()
    clean = torch.cat(clean_margin).numpy() * sign
    after = margins * sign  # truth margins, condition question
    groups = np.asarray(behaviour.groups)
    points, at = [], 0
    for kk, layer, _, randoms in plan:
        top, rand = after[at], after[at + 1 : at + 1 + len(randoms)]
        at += 1 + len(randoms)
        excess = (top - clean) - (rand - clean).mean(0)
        test = mcnemar_exact(clean > 0, top > 0)
        points.append(AblationPoint(
            k=kk, layer=layer, accuracy_clean=float((clean > 0).mean()), accuracy_top=float((top > 0).mean()),
            accuracy_random=float((rand > 0).mean()), drop_pp=test.drop_pp, mcnemar_p=test.p_value,
            drop_ci=cluster_bootstrap_ci(100.0 * ((clean > 0).astype(float) - (top > 0)), groups,
                                         n_resamples=n_resamples, seed=seed),
            margin_change_top=float((top - clean).mean()), margin_change_random=float((rand - clean).mean()),
            excess=float(excess.mean()),
            excess_ci=cluster_bootstrap_ci(excess, groups, n_resamples=n_resamples, seed=seed),
            excess_p=cluster_sign_flip_p(excess, groups, seed=seed),
            flips_top=float(((top > 0) != (clean > 0)).mean()),
            flips_random=float(((rand > 0) != (clean > 0)).mean()),
            n=len(clean), n_images=len(set(behaviour.groups)), n_random=len(randoms)))
    return AblationCurve(points=tuple(points), kind=found.kind, method=found.method, baseline=baseline,
                         ranked_on=dict(found.provenance), evaluated_on=behaviour.source)
