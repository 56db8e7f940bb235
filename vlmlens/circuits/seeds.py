"""Arms over training seeds: is a difference between two models' recipes bigger than seed-to-seed spread?

A fusion comparison of single checkpoints compares three *models*; a claim about three
*recipes* (late, early, native fusion) needs several training seeds of each and a test that
treats the seed, not the question, as the unit of replication: two seeds of one recipe can
differ as much as two recipes do, and questions of one model never show that.

Per replicate (one seed of one arm), :func:`replicate_statistics` reads the numbers of its
row of :func:`~vlmlens.circuits.fusion.compare`: where its units sit (``depth``), how
concentrated they are (``top_share``), and, per intervention, the held-out accuracy drop in
percentage points, clean minus ablated (``drop top-k=4``: the top 4 units; ``drop top-1.0%``:
the top 1% of the model's scored units, so arms of different widths compare like with like;
``drop destroy 25%``: a quarter of the peak layer). An accuracy drop is the intervention's
effect within that model, so the difference of two arms' mean drops is the **model x
intervention interaction**, in percentage points:
``(acc_A clean - acc_A ablated) - (acc_B clean - acc_B ablated)``.

:func:`seed_interaction` tests it across seeds: the difference of the arms' means, a Welch
t interval (seeds of an arm as a small normal sample; with 3 seeds it is wide, as it should
be) and a permutation p-value over every way of relabelling the seeds into the two arms
(exact up to :data:`MAX_RELABELLINGS` relabellings, estimated from that many random ones
beyond). With 3 and 3 seeds there are 20 relabellings, so the smallest p attainable is 0.1:
three seeds can show a large consistent difference, not a significant one at 0.05.
Holm-adjusted p-values are given over every test of one comparison. Statistics that not
every replicate of both arms has (a k that exists in one model only) are listed as not
compared rather than tested.

Examples:
    >>> out = seed_interaction([10.0, 12.0, 11.0], [1.0, 2.0, 0.0])
    >>> out["difference"], round(out["p"], 2), out["min_p"], out["relabellings"]
    (10.0, 0.1, 0.1, 20)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from vlmlens.errors import InputError
from vlmlens.vrp.stats import adjust_p_values

__all__ = ["compare_arms", "replicate_statistics", "seed_interaction"]

MAX_RELABELLINGS = 200_000
"""Above this many relabellings, the permutation p is estimated from this many random ones."""


def replicate_statistics(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one model's :func:`~vlmlens.circuits.fusion.compare` row that arms are compared on."""
    out = {"depth": float(row["depth"]), "top_share": float(row["top_share"])}
    drops = {point["k"]: float(point["drop_pp"]) for point in row["ablation"] if point["layer"] is None}
    out |= {f"drop top-k={k}": drops[k] for k in row["ks"]["counts"]}
    out |= {f"drop top-{label}": drops[k] for label, k in row["ks"]["fractions"].items()}
    for point in row["destruction"]:
        out[f"drop destroy {point['fraction']:.0%}"] = float(point["drop_pp"])
    return out


def _welch_ci(a: np.ndarray, b: np.ndarray, level: float) -> list[float]:
    diff = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:  # every seed of both arms agrees: no spread to build an interval from
        return [math.nan, math.nan]
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(sps.t.ppf(0.5 + level / 2, df)) * se
    return [float(diff - half), float(diff + half)]


def seed_interaction(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Difference of two arms' mean statistic over their seeds, with a Welch CI and a permutation p.

    Args:
        a, b: the statistic per seed of each arm (at least 2 each).
        level: the CI's level.
        seed: the random relabellings' seed, used only above :data:`MAX_RELABELLINGS`.

    Returns:
        ``difference`` (mean a - mean b), ``ci`` (Welch t; NaN where no seed of either arm
        differs from its arm's others), ``p`` (two-sided permutation p over seed relabellings,
        observed included), ``exact`` (every relabelling enumerated), ``relabellings``,
        ``min_p`` (the smallest p these seed counts and this method allow), ``n``.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError(f"a seed interaction needs >= 2 finite values per arm, got {list(a)} and {list(b)}; "
                         "train more seeds of each arm (vlmlens zoo train --seed S)")
    pooled = np.concatenate([x, y])
    n, k = len(pooled), len(x)
    observed = abs(x.mean() - y.mean())
    total = math.comb(n, k)
    exact = total <= MAX_RELABELLINGS
    if exact:
        groups = np.array(list(itertools.combinations(range(n), k)))
    else:
        rng = np.random.default_rng(seed)
        groups = np.array([rng.permutation(n)[:k] for _ in range(MAX_RELABELLINGS)])
    mask = np.zeros((len(groups), n), dtype=bool)
    np.put_along_axis(mask, groups, True, axis=1)
    sums = mask @ pooled
    diffs = np.abs(sums / k - (pooled.sum() - sums) / (n - k))
    hits = int((diffs >= observed - 1e-9 * max(1.0, float(np.abs(pooled).max()))).sum())  # ties count
    p = hits / len(groups) if exact else (hits + 1) / (len(groups) + 1)
    min_p = 2 / total if k == n - k else 1 / total  # a balanced relabelling ties with its complement
    return {"difference": float(x.mean() - y.mean()), "ci": _welch_ci(x, y, level), "p": float(p),
            "exact": exact, "relabellings": total,
            "min_p": float(min_p if exact else max(min_p, 1 / (len(groups) + 1))), "n": [k, n - k]}


def compare_arms(models: Mapping[str, Mapping[str, Any]], arms: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Per arm the replicates' statistics (mean, sd), and per pair of arms with >= 2 seeds each the interactions.

    Args:
        models: ``compare``'s per-model rows, by replicate name.
        arms: arm -> its replicates' names.

    Returns:
        ``{"arms": {arm: {"replicates", "values", "mean", "sd"}}, "interactions": {"a vs b": {statistic: ...}},
        "not_compared": {"a vs b": [statistics only one arm has]}, "n_tests", "adjustment"}``; every
        interaction also carries ``p_holm``, Holm-adjusted over all of them.
    """
    per_arm = {arm: [replicate_statistics(models[name]) for name in names] for arm, names in arms.items()}
    out: dict[str, Any] = {"arms": {}, "interactions": {}, "not_compared": {}}
    for arm, rows in per_arm.items():
        keys = [key for key in rows[0] if all(key in r for r in rows)]  # seeds of one arm share their shapes
        values = {key: [r[key] for r in rows] for key in keys}
        out["arms"][arm] = {"replicates": list(arms[arm]), "values": values,
                            "mean": {key: float(np.mean(v)) for key, v in values.items()},
                            "sd": {key: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for key, v in values.items()}}
    replicated = [arm for arm, names in arms.items() if len(names) >= 2]
    tests = []
    for i, a in enumerate(replicated):
        for b in replicated[i + 1:]:
            va, vb = out["arms"][a]["values"], out["arms"][b]["values"]
            entry = {key: seed_interaction(va[key], vb[key]) for key in va if key in vb}
            out["interactions"][f"{a} vs {b}"] = entry
            out["not_compared"][f"{a} vs {b}"] = sorted(set(va) ^ set(vb))
            tests += list(entry.values())
    for test, adjusted in zip(tests, adjust_p_values([t["p"] for t in tests], "holm"), strict=True):
        test["p_holm"] = float(adjusted)
    out["n_tests"] = len(tests)
    out["adjustment"] = "holm over every interaction test of this comparison"
    return out
