"""Statistics for the VLM Reliability Probe: correlations, AUROC, McNemar and their CIs.

Every result carries its ``n``. Inputs may be numpy arrays or torch tensors; the small
converters here (:func:`to_numpy`, :func:`as_finite`, :func:`as_binary`) are shared by the
other ``vlmlens.vrp`` modules.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int, Real, Shaped
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from vlmlens.errors import DataError

logger = logging.getLogger(__name__)

ArrayOrTensor = np.ndarray | torch.Tensor
"""What the measurement functions accept: a numpy array or a torch tensor (any device)."""

ALPHA = 0.05
"""Significance level of the findings a sensitivity sweep compares (:func:`sweep_verdict`)."""

_BOOTSTRAP_CELLS = 2_000_000  # resamples x n that auroc_ci holds in memory at once


def to_numpy(x: ArrayOrTensor) -> np.ndarray:
    """Return ``x`` as a numpy array (detached, on CPU; half precision widened to float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()
    return np.asarray(x)


def as_finite(
    x: ArrayOrTensor, *, name: str, ndim: int, dtype: type[np.floating] = np.float64
) -> np.ndarray:
    """Return ``x`` as a ``dtype`` array with ``ndim`` axes; raise if a value is not finite."""
    arr = to_numpy(x).astype(dtype, copy=False)
    if arr.ndim != ndim:
        raise DataError(f"{name} must have {ndim} axes, got shape {arr.shape}; reshape it first.")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{name} has {int(bad.sum())} non-finite values (first at index {first}: "
            f"{arr[first]}); drop or impute them before measuring."
        )
    return arr


def as_binary(x: ArrayOrTensor, *, name: str) -> np.ndarray:
    """Return a 1-D bool array from bools or numbers that are all 0 or 1; raise otherwise."""
    arr = to_numpy(x)
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {arr.shape}; flatten it first.")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}.")
    bad = arr[~np.isin(arr, (0, 1))]
    if bad.size:
        raise DataError(
            f"{name} must be binary (bool or 0/1), found values {np.unique(bad)[:5].tolist()}; "
            "pass correctness as a bool array."
        )
    return arr.astype(bool)


def check_same_length(**arrays: np.ndarray) -> int:
    """Return the common first-axis length of named arrays, raising if they differ."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"inputs must be paired (same length), got lengths {lengths}.")
    return next(iter(lengths.values()))


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise DataError(f"level must be in (0, 1), got {level}; use e.g. 0.95.")
    return float(sps.norm.ppf(0.5 + level / 2.0))


def _percentile_ci(values: np.ndarray, level: float, n: int) -> tuple[tuple[float, float], int]:
    """Percentile interval of the finite bootstrap values, and how many were dropped."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise DataError(
            f"the statistic was undefined on all {values.size} bootstrap resamples (n={n}), "
            "e.g. every resample held a single class; collect more samples."
        )
    alpha = 50.0 * (1.0 - level)
    lo, hi = np.percentile(finite, [alpha, 100.0 - alpha])
    return (float(lo), float(hi)), int(values.size - finite.size)


def _check_ci(ci: tuple[float, float], what: str) -> None:
    if ci[0] > ci[1]:
        raise DataError(f"{what} must be ordered (lo <= hi), got {ci}.")


def _resampler(n: int, groups: Shaped[np.ndarray, " n"] | None, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """A function drawing one bootstrap resample's row indices: rows, or whole clusters."""
    if groups is None:
        return lambda: rng.integers(0, n, size=n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"groups needs one cluster id per row ({n}), got shape {g.shape}.")
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    if len(members) < 2:
        raise DataError(f"a cluster bootstrap needs at least two clusters, got {len(members)}.")
    return lambda: np.concatenate([members[c] for c in rng.integers(0, len(members), size=len(members))])


def fisher_ci(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Fisher z confidence interval of a correlation: tanh(atanh(r) +- z / sqrt(n - 3)).

    Args:
        r: The correlation, in [-1, 1].
        n: The number of pairs it was computed from; must be > 3.
        level: The coverage, e.g. 0.95 (z = 1.959964).

    Returns:
        ``(lo, hi)``.

    Raises:
        DataError: if ``r`` is outside [-1, 1], ``n`` <= 3 or ``level`` outside (0, 1).

    Examples:
        >>> [round(v, 3) for v in fisher_ci(0.001, 3090)]
        [-0.034, 0.036]
    """
    if not -1.0 <= r <= 1.0:
        raise DataError(f"r must be in [-1, 1], got {r}.")
    if n <= 3:
        raise DataError(f"fisher_ci needs n > 3 pairs, got n={n}.")
    z = _z(level)
    if abs(r) == 1.0:
        return (float(r), float(r))
    centre, half = np.arctanh(r), z / np.sqrt(n - 3)
    return (float(np.tanh(centre - half)), float(np.tanh(centre + half)))


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: ArrayOrTensor,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Shaped[np.ndarray, " n"] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*arrays)``, resampling rows jointly (paired).

    With ``groups`` (one cluster id per row, e.g. the image), whole clusters are resampled
    instead of rows, so the interval keeps the dependence between a cluster's rows.

    Resamples where the statistic is not finite (e.g. a correlation on a single-class
    resample) are dropped; how many is logged at DEBUG level.

    Args:
        statistic: Called as ``statistic(*resampled_arrays)``; returns a number.
        *arrays: One or more arrays sharing their first-axis length n >= 2.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives the same CI.
        level: The coverage.
        groups: Cluster ids to resample by (``None``: rows).

    Returns:
        ``(lo, hi)``.

    Raises:
        DataError: if no array is given, lengths differ, n < 2 (or fewer than 2 clusters), or
            no resample is finite.

    Examples:
        >>> lo, hi = bootstrap_ci(np.mean, np.arange(100.0), n_resamples=200)
        >>> lo < 49.5 < hi
        True
    """
    if not arrays:
        raise DataError("bootstrap_ci needs at least one array to resample.")
    if n_resamples < 1:
        raise DataError(f"n_resamples must be >= 1, got {n_resamples}.")
    _z(level)  # validates level
    data = [to_numpy(a) for a in arrays]
    n = check_same_length(**{f"arrays[{i}]": a for i, a in enumerate(data)})
    if n < 2:
        raise DataError(f"bootstrap_ci needs n >= 2 rows, got n={n}.")
    draw = _resampler(n, groups, np.random.default_rng(seed))
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = draw()
        values[i] = float(statistic(*(a[idx] for a in data)))
    ci, dropped = _percentile_ci(values, level, n)
    logger.debug("bootstrap_ci dropped %d of %d resamples as non-finite", dropped, n_resamples)
    return ci


@dataclass(frozen=True, kw_only=True)
class Correlation:
    """A point-biserial correlation with its Fisher and bootstrap CIs.

    Attributes:
        r: The correlation coefficient.
        p: Two-sided p-value of r = 0.
        n: Number of pairs.
        fisher_ci: Fisher z interval ``(lo, hi)``.
        bootstrap_ci: Percentile bootstrap interval ``(lo, hi)``.
        level: Coverage of both intervals.
        clustered: Whether the bootstrap resampled clusters (images) rather than pairs.
    """

    r: float
    p: float
    n: int
    fisher_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]
    level: float = 0.95
    clustered: bool = False

    def __post_init__(self) -> None:
        if not -1.0 <= self.r <= 1.0 or self.n < 4:
            raise DataError(
                f"Correlation needs r in [-1, 1] and n >= 4, got r={self.r}, n={self.n}."
            )
        _check_ci(self.fisher_ci, "Correlation.fisher_ci")
        _check_ci(self.bootstrap_ci, "Correlation.bootstrap_ci")


def point_biserial_r(binary: np.ndarray, continuous: np.ndarray) -> float:
    """R_pb of two paired arrays, NaN where it is undefined (one class, or a constant measurement)."""
    if binary.all() or not binary.any() or np.ptp(continuous) == 0:
        return float("nan")
    return float(sps.pointbiserialr(binary, continuous).statistic)


def bootstrap_weights(n: int, n_resamples: int, *, seed: int = 0,
                      groups: Shaped[np.ndarray, " n"] | None = None) -> Int[np.ndarray, "resample n"]:
    """How many times each row enters each bootstrap resample: the draws of :func:`bootstrap_ci`.

    The same seed and groups give the same resamples as :func:`bootstrap_ci`, as counts, so
    a statistic that is a weighted sum can be computed for every resample at once.
    """
    if n_resamples < 1 or n < 2:
        raise DataError(f"a bootstrap needs n_resamples >= 1 and n >= 2 rows, got n_resamples={n_resamples}, n={n}.")
    draw = _resampler(n, groups, np.random.default_rng(seed))
    return np.stack([np.bincount(draw(), minlength=n) for _ in range(n_resamples)])


def weighted_point_biserial_r(binary: np.ndarray, continuous: np.ndarray,
                              weights: Int[np.ndarray, "resample n"]) -> Float[np.ndarray, " resample"]:
    """R_pb of every resample given as row counts (:func:`bootstrap_weights`); NaN where undefined.

    Equals :func:`point_biserial_r` of the resampled rows (Pearson's r of the 0/1 outcome
    with the measurement), without building the resamples.
    """
    w = weights.astype(np.float64)
    y, x = binary.astype(np.float64), continuous.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty or degenerate resamples: NaN, set below
        total = w.sum(1, keepdims=True)
        dy = y[None, :] - (w @ y)[:, None] / total
        dx = x[None, :] - (w @ x)[:, None] / total
        cov, var_y, var_x = ((w * dy * dx).sum(1), (w * dy * dy).sum(1), (w * dx * dx).sum(1))
        r = np.clip(cov / np.sqrt(var_y * var_x), -1.0, 1.0)
    chosen = weights > 0
    positives = (weights * (binary != 0)).sum(1)
    constant = np.where(chosen, x, np.inf).min(1) == np.where(chosen, x, -np.inf).max(1)
    undefined = (positives == 0) | (positives == weights.sum(1)) | constant  # decided on counts, exactly
    return np.where(undefined, np.nan, r)


def point_biserial(
    binary: Shaped[ArrayOrTensor, " batch"],
    continuous: Real[ArrayOrTensor, " batch"],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Shaped[np.ndarray, " batch"] | None = None,
) -> Correlation:
    """Point-biserial correlation R_pb of a 0/1 outcome with a continuous measurement.

    Args:
        binary: The outcome (e.g. answer correct), bool or 0/1, shape ``(batch,)``.
        continuous: The measurement (e.g. H_s), shape ``(batch,)``.
        n_resamples: Bootstrap resamples for ``bootstrap_ci``.
        seed: Bootstrap seed.
        level: Coverage of the CIs.
        groups: Cluster ids (e.g. images): the bootstrap then resamples whole clusters
            (``Correlation.clustered``); the Fisher CI always assumes independent pairs.

    Returns:
        A :class:`Correlation` (``scipy.stats.pointbiserialr`` for r and p).

    Raises:
        DataError: if the inputs are unpaired, non-binary, non-finite, n < 4, the
            outcome has a single class, or the measurement is constant.

    Examples:
        >>> y = np.array([0, 0, 1, 1, 0, 1] * 5)
        >>> round(point_biserial(y, y + 0.1 * np.arange(30), n_resamples=50).r, 2)
        0.56
    """
    y = as_binary(binary, name="binary")
    x = as_finite(continuous, name="continuous", ndim=1)
    n = check_same_length(binary=y, continuous=x)
    if n < 4:
        raise DataError(f"point_biserial needs n >= 4 pairs, got n={n}.")
    if y.all() or not y.any():
        raise DataError(f"binary has a single class (all {bool(y[0])}); R_pb is undefined.")
    if np.ptp(x) == 0:
        raise DataError(f"continuous is constant ({x[0]}); R_pb is undefined.")
    res = sps.pointbiserialr(y, x)
    r = float(np.clip(res.statistic, -1.0, 1.0))
    return Correlation(
        r=r,
        p=float(res.pvalue),
        n=n,
        fisher_ci=fisher_ci(r, n, level),
        bootstrap_ci=_percentile_ci(weighted_point_biserial_r(
            y, x, bootstrap_weights(n, n_resamples, seed=seed, groups=groups)), level, n)[0],
        level=level,
        clustered=groups is not None,
    )


@dataclass(frozen=True, kw_only=True)
class AUROC:
    """Area under the ROC curve with a bootstrap CI.

    Attributes:
        auroc: ``sklearn.metrics.roc_auc_score`` on all samples.
        ci: Percentile bootstrap interval ``(lo, hi)``.
        n: Number of samples, ``n_pos + n_neg``.
        n_pos: Positives (label True); ``n_neg``: negatives.
        n_skipped: Resamples skipped because they held a single class.
        level: Coverage of ``ci``.
        clustered: Whether the bootstrap resampled clusters (images) rather than samples.
    """

    auroc: float
    ci: tuple[float, float]
    n: int
    n_pos: int
    n_neg: int
    n_skipped: int = 0
    level: float = 0.95
    clustered: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.auroc <= 1.0:
            raise DataError(f"AUROC.auroc must be in [0, 1], got {self.auroc}.")
        if self.n != self.n_pos + self.n_neg or min(self.n_pos, self.n_neg) < 1:
            raise DataError(
                f"AUROC needs n = n_pos + n_neg with both >= 1, got n={self.n}, "
                f"n_pos={self.n_pos}, n_neg={self.n_neg}."
            )
        _check_ci(self.ci, "AUROC.ci")


def rank_auroc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row-wise AUROC by the Mann-Whitney rank sum (equals roc_auc_score; ties averaged)."""
    ranks = sps.rankdata(scores, axis=-1)
    n_pos = labels.sum(axis=-1)
    n_neg = labels.shape[-1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((ranks * labels).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_ci(
    labels: Shaped[ArrayOrTensor, " batch"],
    scores: Real[ArrayOrTensor, " batch"],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Shaped[np.ndarray, " batch"] | None = None,
) -> AUROC:
    """AUROC of ``scores`` for predicting ``labels``, with a paired bootstrap CI.

    Args:
        labels: Bool or 0/1 labels, shape ``(batch,)``; both classes must be present.
        scores: Higher means more likely positive, shape ``(batch,)``.
        n_resamples: Bootstrap resamples; those with a single class are skipped and
            counted in ``AUROC.n_skipped``.
        seed: Bootstrap seed.
        level: Coverage of the CI.
        groups: Cluster ids (e.g. images): the bootstrap then resamples whole clusters.

    Returns:
        An :class:`AUROC`.

    Raises:
        DataError: if the inputs are unpaired, non-binary or non-finite, the labels hold
            a single class, or every resample held a single class.

    Examples:
        >>> auroc_ci(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])).auroc
        0.75
    """
    y = as_binary(labels, name="labels")
    s = as_finite(scores, name="scores", ndim=1)
    n = check_same_length(labels=y, scores=s)
    n_pos = int(y.sum())
    if n_pos in (0, n):
        raise DataError(
            f"labels hold a single class ({n_pos} positives of n={n}); AUROC needs both."
        )
    if n_resamples < 1:
        raise DataError(f"n_resamples must be >= 1, got {n_resamples}.")
    _z(level)  # validates level
    rng = np.random.default_rng(seed)
    if groups is None:
        chunk = max(1, _BOOTSTRAP_CELLS // n)
        values = []
        for start in range(0, n_resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
            values.append(rank_auroc(y[idx], s[idx]))
        resampled = np.concatenate(values)
    else:
        draw = _resampler(n, groups, rng)
        resampled = np.array([rank_auroc(y[idx][None], s[idx][None])[0] for idx in (draw() for _ in range(n_resamples))])
    ci, skipped = _percentile_ci(resampled, level, n)
    return AUROC(
        auroc=float(roc_auc_score(y, s)),
        ci=ci,
        n=n,
        n_pos=n_pos,
        n_neg=n - n_pos,
        n_skipped=skipped,
        level=level,
        clustered=groups is not None,
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
