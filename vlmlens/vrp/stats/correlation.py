"""Point-biserial correlations and AUROC of a signal against correctness, with their CIs."""

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int, Real, Shaped
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from vlmlens.errors import DataError
from vlmlens.vrp.stats.base import (
    _BOOTSTRAP_CELLS,
    ArrayOrTensor,
    _check_ci,
    _percentile_ci,
    _resampler,
    _z,
    as_binary,
    as_finite,
    check_same_length,
    fisher_ci,
)


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
