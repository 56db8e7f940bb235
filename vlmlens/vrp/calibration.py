"""Calibration: does a stated confidence match how often the answer is right?

The paper's premise is calibration, so each confidence signal (token probability,
self-consistency S_SC, a probe's P(correct)) gets its expected calibration error and the
reliability diagram behind it. Rule: ``n_bins`` equal-width bins on [0, 1] (the last one
closed); ECE = sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|;
empty bins contribute nothing. The CI resamples questions, or whole images with ``groups``.
"""

from dataclasses import dataclass

import numpy as np
from jaxtyping import Real, Shaped

from vlmlens.errors import DataError
from vlmlens.vrp.stats import (
    ArrayOrTensor,
    as_binary,
    as_finite,
    bootstrap_ci,
    check_same_length,
)

__all__ = ["Calibration", "ReliabilityBin", "calibration", "expected_calibration_error"]


@dataclass(frozen=True, kw_only=True)
class ReliabilityBin:
    """One bar of a reliability diagram.

    Attributes:
        lo: Lower edge; ``hi``: upper edge.
        n: Examples in the bin.
        confidence: Their mean confidence.
        accuracy: Their share correct.
    """

    lo: float
    hi: float
    n: int
    confidence: float
    accuracy: float


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Expected calibration error with its CI, and the reliability diagram's non-empty bins.

    Attributes:
        ece: Expected calibration error (0 = calibrated).
        ci: Percentile bootstrap CI of ``ece``.
        n: Examples.
        mean_confidence: Mean stated confidence; ``accuracy``: share correct (their gap is
            over- (> 0) or under-confidence).
        bins: The non-empty bins, low to high.
        n_bins: Bins the unit interval was cut into.
        clustered: Whether the bootstrap resampled images rather than questions.
    """

    ece: float
    ci: tuple[float, float]
    n: int
    mean_confidence: float
    accuracy: float
    bins: tuple[ReliabilityBin, ...]
    n_bins: int
    clustered: bool = False


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE of ``confidence`` (in [0, 1]) against 0/1 ``correct`` with equal-width bins."""
    idx = _bin_index(confidence, n_bins)
    gap = np.bincount(idx, weights=correct.astype(float), minlength=n_bins) - np.bincount(
        idx, weights=confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / len(confidence))


def calibration(
    confidence: Real[ArrayOrTensor, " batch"],
    correct: Shaped[ArrayOrTensor, " batch"],
    *,
    n_bins: int = 10,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Shaped[np.ndarray, " batch"] | list | None = None,
) -> Calibration:
    """ECE with a bootstrap CI, and the reliability diagram, of a confidence in P(correct).

    Args:
        confidence: Stated probability that each answer is right, in [0, 1].
        correct: Whether it was right, bool or 0/1.
        n_bins: Equal-width bins on [0, 1].
        n_resamples: Bootstrap resamples of the CI.
        seed: Bootstrap seed.
        groups: One image id per answer: the bootstrap then resamples images.

    Returns:
        A :class:`Calibration`.

    Raises:
        DataError: if a confidence lies outside [0, 1], values are not finite, inputs are
            unpaired, or ``n_bins`` < 1.

    Examples:
        >>> conf = np.array([0.9, 0.9, 0.9, 0.9, 0.6, 0.6]); right = np.array([1, 1, 1, 0, 1, 0])
        >>> round(calibration(conf, right, n_bins=10, n_resamples=50).ece, 4)
        0.1333
    """
    if n_bins < 1:
        raise DataError(f"n_bins must be >= 1, got {n_bins}.")
    p = as_finite(confidence, name="confidence", ndim=1)
    y = as_binary(correct, name="correct")
    check_same_length(confidence=p, correct=y)
    outside = p[(p < 0) | (p > 1)]
    if outside.size:
        raise DataError(f"confidence must lie in [0, 1] (a probability), found {outside[:3].tolist()}; "
                        "pass probabilities, e.g. exp(mean log-probability), not logits.")
    g = None if groups is None else np.asarray(groups)
    ci = bootstrap_ci(lambda a, b: expected_calibration_error(a, b, n_bins), p, y, n_resamples=n_resamples,
                      seed=seed, groups=g)
    idx = _bin_index(p, n_bins)
    bins = tuple(
        ReliabilityBin(lo=b / n_bins, hi=(b + 1) / n_bins, n=int((idx == b).sum()),
                       confidence=float(p[idx == b].mean()), accuracy=float(y[idx == b].mean()))
        for b in np.unique(idx)
    )
    return Calibration(ece=expected_calibration_error(p, y, n_bins), ci=ci, n=len(p),
                       mean_confidence=float(p.mean()), accuracy=float(y.mean()), bins=bins, n_bins=n_bins,
                       clustered=g is not None)
