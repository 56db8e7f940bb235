"""The converters and generic CIs every VRP statistic builds on: numpy/torch inputs, Fisher and
(clustered) percentile-bootstrap intervals."""

import logging
from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Shaped
from scipy import stats as sps

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
