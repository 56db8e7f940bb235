"""How concentrated is a behaviour: one scale on which two models compare.

:func:`concentration` summarises a :class:`~vlmlens.circuits.localization.Localization`
and its :class:`~vlmlens.circuits.validate.AblationCurve`:

* ``top_share``: the share of all units' absolute score held by the top 1% of units (at
  least one unit): how much of the attribution a handful of units carries;
* ``depth_profile``: the share of absolute score in each layer, with the layer's
  normalised depth ``l / (n_layers - 1)``;
* ``k_at_drop``: the smallest ``k`` whose top-k ablation drops held-out accuracy by at
  least ``drop_pp`` points with an exact McNemar p below ``alpha`` **and** moves the truth
  margin more than matched random units do (permutation p below ``alpha``);
* ``concentrated``: ``k_at_drop`` exists and is at most ``fraction`` of the scored units.

The verdict's thresholds are conventions, stated in the result; its p-values are per ``k``,
not corrected for the number of ``k`` tried.

Examples:
    >>> from vlmlens.testing import tiny_vlm
    >>> from vlmlens.data import synth_pope
    >>> from vlmlens.circuits import Behaviour, localize, ablation_curve
    >>> model = tiny_vlm("llava")
    >>> rank, held_out = Behaviour.from_dataset(synth_pope("adversarial", n_images=4, seed=0)).split()
    >>> found = localize(model, rank, kind="neuron", method="dla", k=4)
    >>> summary = concentration(found, ablation_curve(model, held_out, found, ks=(1, 4), n_random=2, n_resamples=50))
    >>> 0.0 < summary.top_share <= 1.0
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vlmlens.circuits.localization import Localization
from vlmlens.circuits.validate import AblationCurve
from vlmlens.errors import InputError

__all__ = ["Concentration", "concentration", "top_one_percent_share"]


def top_one_percent_share(scores: np.ndarray) -> float:
    """The share of ``sum |scores|`` held by the top 1% of units (at least one); NaN counts as 0."""
    flat = np.sort(np.nan_to_num(np.abs(scores)).ravel())[::-1]
    total = flat.sum()
    return float(flat[: max(1, math.ceil(0.01 * flat.size))].sum() / total) if total > 0 else 0.0


@dataclass(frozen=True, kw_only=True)
class Concentration:
    """The summary; see the module docs for each field's definition.

    Attributes:
        units: units scored.
        top_share: share of absolute score in the top 1% of units.
        depth_profile: ``(normalised depth, share of absolute score)`` per scored layer.
        k_at_drop: smallest k that passes the drop test, or ``None``.
        concentrated: the verdict.
        rule: the verdict's rule with its thresholds, in words.
    """

    units: int
    top_share: float
    depth_profile: tuple[tuple[float, float], ...]
    k_at_drop: int | None
    concentrated: bool
    rule: str


def concentration(found: Localization, curve: AblationCurve, *, drop_pp: float = 5.0, alpha: float = 0.05,
                  fraction: float = 0.02) -> Concentration:
    """Summarise how concentrated the behaviour is (module docs).

    Raises:
        InputError: if the curve is not of this localization's units, or thresholds are out of range.
    """
    if curve.kind != found.kind or curve.method != found.method:
        raise InputError(f"the curve ablates {curve.method} {curve.kind} units, the localization ranks {found.method} "
                         f"{found.kind} units; pass the curve made from this localization")
    if not (0 < alpha < 1 and 0 < fraction <= 1 and drop_pp > 0):
        raise InputError(f"need 0 < alpha < 1, 0 < fraction <= 1 and drop_pp > 0, got {alpha}, {fraction}, {drop_pp}")
    scores = found.scores.abs().numpy()
    scores = np.where(np.isnan(scores), 0.0, scores)
    total = float(scores.sum())
    units = scores.size
    profile = tuple((layer / max(1, found.n_layers - 1), float(scores[r].sum() / total) if total > 0 else 0.0)
                    for r, layer in enumerate(found.layers))
    passing = sorted(p.k for p in curve.points if p.layer is None and p.drop_pp >= drop_pp and p.mcnemar_p < alpha
                     and p.excess < 0 and p.excess_p < alpha)
    k_at = passing[0] if passing else None
    limit = max(1, math.floor(fraction * units))
    rule = (f"concentrated if ablating the top k <= {limit} units ({fraction:.0%} of {units}) drops held-out "
            f"accuracy by >= {drop_pp:g} pp (exact McNemar p < {alpha:g}) and moves the truth margin more than "
            f"matched random units (permutation p < {alpha:g})")
    return Concentration(units=int(units), top_share=top_one_percent_share(scores), depth_profile=profile, k_at_drop=k_at,
                         concentrated=k_at is not None and k_at <= limit, rule=rule)
