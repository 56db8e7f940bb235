"""Paired tests of interventions: exact McNemar, image-clustered bootstraps and sign flips,
paired differences, sweep verdicts and multiplicity adjustment."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Real, Shaped
from scipy import stats as sps

from vlmlens.errors import DataError
from vlmlens.vrp.stats.base import (
    ALPHA,
    ArrayOrTensor,
    _percentile_ci,
    as_binary,
    as_finite,
    check_same_length,
)


@dataclass(frozen=True, kw_only=True)
class McNemar:
    """Exact McNemar test of paired 0/1 outcomes (e.g. correct before / after masking).

    Attributes:
        b: Pairs correct before and wrong after; ``c``: wrong before and correct after.
        p_value: Exact two-sided binomial p-value of b vs c (1.0 when b + c = 0).
        n: Number of pairs.
        accuracy_before: Share correct before; ``accuracy_after``: share correct after.
        drop_pp: ``100 * (accuracy_before - accuracy_after)``, in percentage points.
        drop_ci_pp: An exact (conservative) 95% CI of the drop in pp: the drop is
            P(b) - P(c), so [L_b - U_c, U_b - L_c] from Clopper-Pearson 97.5% intervals of the
            two discordant shares (Bonferroni: coverage >= 95% for every n). Unlike the Wald
            interval it has width when no pair is discordant (b = c = 0 gives about
            +-440/n pp). Questions are treated as independent; the image-bootstrap CI
            beside it (:func:`paired_difference`) is not exact but keeps the clustering.
    """

    b: int
    c: int
    p_value: float
    n: int
    accuracy_before: float
    accuracy_after: float
    drop_pp: float
    drop_ci_pp: tuple[float, float] = (-100.0, 100.0)

    def __post_init__(self) -> None:
        if min(self.b, self.c) < 0 or self.b + self.c > self.n or not 0 <= self.p_value <= 1:
            raise DataError(
                f"McNemar needs 0 <= b, c, b + c <= n and p in [0, 1], got b={self.b}, "
                f"c={self.c}, n={self.n}, p_value={self.p_value}."
            )


def mcnemar_exact(
    before_correct: Shaped[ArrayOrTensor, " batch"],
    after_correct: Shaped[ArrayOrTensor, " batch"],
) -> McNemar:
    """Exact McNemar test: two-sided binomial test of the discordant pairs at p = 0.5.

    Args:
        before_correct: Correctness per item under the first condition, bool or 0/1.
        after_correct: Correctness of the same items under the second condition.

    Returns:
        A :class:`McNemar`.

    Raises:
        DataError: if the inputs are unpaired, empty or not binary.

    Examples:
        >>> r = mcnemar_exact(np.array([1, 1, 1, 1, 0]), np.array([0, 0, 0, 1, 0]))
        >>> (r.b, r.c, r.p_value)
        (3, 0, 0.25)
    """
    before = as_binary(before_correct, name="before_correct")
    after = as_binary(after_correct, name="after_correct")
    n = check_same_length(before_correct=before, after_correct=after)
    if n == 0:
        raise DataError("mcnemar_exact got empty inputs; pass one outcome per item.")
    b, c = int((before & ~after).sum()), int((~before & after).sum())
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(b, c), b + c, 0.5)))
    acc_before, acc_after = float(before.mean()), float(after.mean())
    (lo_b, hi_b), (lo_c, hi_c) = _clopper_pearson(b, n, 0.975), _clopper_pearson(c, n, 0.975)
    return McNemar(
        b=b,
        c=c,
        p_value=p,
        n=n,
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        drop_pp=100.0 * (acc_before - acc_after),
        drop_ci_pp=(100.0 * (lo_b - hi_c), 100.0 * (hi_b - lo_c)),
    )


def _clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """Exact binomial CI of a proportion k / n (beta quantiles)."""
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _cluster_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: the sum of its values and its size (clusters in first-appearance order)."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cluster = rank[inverse]
    return np.bincount(cluster, weights=values), np.bincount(cluster).astype(float)


def _clustered(values: ArrayOrTensor, groups: Shaped[np.ndarray, " n"] | list) -> tuple[np.ndarray, np.ndarray]:
    x = as_finite(values, name="values", ndim=1)
    g = np.asarray(groups)
    if g.shape != x.shape:
        raise DataError(f"groups needs one cluster id per value ({x.shape[0]}), got shape {g.shape}.")
    return x, g


def cluster_bootstrap_ci(
    values: Real[ArrayOrTensor, " n"],
    groups: Shaped[np.ndarray, " n"] | list,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of the mean of ``values``, resampling whole clusters (e.g. images).

    Questions about one image are not independent; resampling images instead of questions
    keeps that dependence in the interval.

    Raises:
        DataError: on unpaired inputs, non-finite values or fewer than two clusters.

    Examples:
        >>> v = np.r_[np.ones(6), np.zeros(6)]
        >>> g = np.repeat(np.arange(4), 3)
        >>> lo, hi = cluster_bootstrap_ci(v, g, n_resamples=200)
        >>> 0.0 <= lo <= 0.5 <= hi <= 1.0
        True
    """
    x, g = _clustered(values, groups)
    sums, sizes = _cluster_sums(x, g)
    if len(sums) < 2:
        raise DataError(f"a cluster bootstrap needs at least two clusters, got {len(sums)}.")
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(n_resamples, len(sums)))
    means = sums[pick].sum(1) / sizes[pick].sum(1)
    ci, _ = _percentile_ci(means, level, len(x))
    return ci


def cluster_sign_flip_p(
    values: Real[ArrayOrTensor, " n"],
    groups: Shaped[np.ndarray, " n"] | list,
    *,
    n_permutations: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided p-value that paired differences have mean 0, flipping signs by cluster.

    Under the null each cluster's differences are as likely negated; all ``2^C`` flips are
    enumerated when there are at most 16 clusters (exact), else ``n_permutations`` random
    flips are drawn (the observed one counted, so p > 0).

    Raises:
        DataError: on unpaired inputs or non-finite values.

    Examples:
        >>> cluster_sign_flip_p(np.ones(8), np.arange(8))   # 8 clusters: exact, 2 of 256 flips as extreme
        0.0078125
    """
    x, g = _clustered(values, groups)
    sums, _ = _cluster_sums(x, g)
    observed = abs(sums.sum())
    tol = 1e-9 * max(1.0, observed)
    if len(sums) <= 16:
        signs = 1 - 2 * ((np.arange(2 ** len(sums))[:, None] >> np.arange(len(sums))) & 1)
        return float(np.mean(np.abs(signs @ sums) >= observed - tol))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_permutations, len(sums)))
    extreme = int(np.sum(np.abs(signs @ sums) >= observed - tol))
    return (extreme + 1) / (n_permutations + 1)


def hurts_more_than_random(top: McNemar, random_drop_pp: float) -> bool:
    """The interventions' claim at one setting: the targeted edit significantly hurts (McNemar
    p < :data:`ALPHA`) and more than the random control's mean drop."""
    return bool(top.p_value < ALPHA and top.drop_pp > random_drop_pp)


def sweep_verdict(findings: Sequence[int | bool | None]) -> str:
    """What a sensitivity sweep says, from each setting's finding.

    A finding is +1 / -1 (a significant effect of that sign), 0 or False (no significant
    effect), True (the claimed effect) or None (undefined). "Null at every setting" is not
    robustness of an effect: it is kept apart from "robust".

    Examples:
        >>> sweep_verdict([1, 1, 1]), sweep_verdict([0, 0]), sweep_verdict([True, False])
        ('robust: the same effect at every setting', 'null at every setting', 'depends on the setting')
    """
    if not findings or any(f is None for f in findings):
        return "undefined at some setting"
    values = [int(f) for f in findings]
    if all(v == 0 for v in values):
        return "null at every setting"
    if len(set(values)) == 1:
        return "robust: the same effect at every setting"
    return "depends on the setting"


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """Mean paired difference ``first - second`` over questions, with image-level inference.

    Attributes:
        mean: Mean of ``first - second`` (e.g. correct under a random ablation minus correct
            under the top-k ablation: the excess drop, as a fraction).
        ci: Percentile CI from a bootstrap resampling images (:func:`cluster_bootstrap_ci`).
        p_value: Two-sided sign-flip p-value by image (:func:`cluster_sign_flip_p`).
        exact: Whether the p-value enumerated every flip (at most 16 images) rather than
            drawing 10,000 (then p >= 1 / 10,001).
        n: Questions; ``n_clusters``: images.
    """

    mean: float
    ci: tuple[float, float]
    p_value: float
    exact: bool
    n: int
    n_clusters: int


def paired_difference(
    first: Real[ArrayOrTensor, " n"],
    second: Real[ArrayOrTensor, " n"],
    groups: Shaped[np.ndarray, " n"] | list,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Mean of ``first - second`` per question, its image-bootstrap CI and its sign-flip test.

    Questions about one image share their errors, so both the interval and the test move
    whole images: the CI resamples them, the test flips the sign of each image's summed
    difference. It works for 0/1 outcomes (a clustered McNemar) and for averages over
    random draws alike, and its CI has width when no pair is discordant within an image
    only if images differ.

    Raises:
        DataError: on unpaired inputs, non-finite values or fewer than two images.

    Examples:
        >>> d = paired_difference(np.ones(12), np.r_[np.zeros(6), np.ones(6)], np.repeat(np.arange(4), 3))
        >>> d.mean, d.p_value, d.exact   # 2 of 4 images lose 3 answers each: half the 16 flips as extreme
        (0.5, 0.5, True)
    """
    a = as_finite(first, name="first", ndim=1)
    b = as_finite(second, name="second", ndim=1)
    check_same_length(first=a, second=b)
    diff = a - b
    g = np.asarray(groups)
    n_clusters = len(np.unique(g))
    return PairedDifference(
        mean=float(diff.mean()), ci=cluster_bootstrap_ci(diff, g, n_resamples=n_resamples, seed=seed, level=level),
        p_value=cluster_sign_flip_p(diff, g, seed=seed), exact=n_clusters <= 16, n=len(diff), n_clusters=n_clusters,
    )


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """Family-wise (``"holm"``) or false-discovery-rate (``"bh"``, Benjamini-Hochberg) adjusted p-values.

    Examples:
        >>> adjust_p_values([0.01, 0.04, 0.03], "holm").round(3).tolist()
        [0.03, 0.06, 0.06]
        >>> adjust_p_values([0.01, 0.04, 0.03], "bh").round(3).tolist()
        [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise DataError(f"p_values must be a 1-D list of values in [0, 1], got {p_values!r}.")
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adjusted = np.minimum.accumulate(m / np.arange(m, 0, -1) * ranked[::-1])[::-1]
    else:
        raise DataError(f"method must be 'holm' or 'bh', got {method!r}.")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out
