"""Pooling R_pb across model families without treating them as one population.

Concatenating three models' questions into one R_pb mixes families whose metrics live on
different scales (H_s in nats over an 8x8 vs a 4x4 grid) and whose accuracies differ, and
counts each POPE question three times as if independent. Here each family keeps its own
R_pb; the pooled value is their inverse-variance weighted mean on Fisher's z scale
(weights n - 3: the fixed-effect meta-analysis), reported with

* the fixed-effect CI, which assumes independent questions and families (as the paper's);
* a CI from a bootstrap that resamples *images*, jointly in every family (the families
  answer the same questions about the same images, so their R_pb are not independent),
  recomputing every family's R_pb and the pooled value each time;
* Cochran's Q, its p-value and I^2 (how much the families disagree), and the
  DerSimonian-Laird random-effects mean and CI beside the fixed-effect one.

Callers pass scale-free measurements (H_s / log N, not H_s in nats).
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from vlmlens.errors import DataError
from vlmlens.vrp.stats import point_biserial_r, weighted_point_biserial_r

__all__ = ["PooledCorrelation", "pool_correlations"]


@dataclass(frozen=True, kw_only=True)
class PooledCorrelation:
    """A meta-analytic R_pb over families.

    Attributes:
        r: Fixed-effect pooled correlation (tanh of the weighted mean z).
        fixed_ci: Its CI assuming independent questions and families.
        bootstrap_ci: Its CI from the joint image bootstrap.
        random_r: DerSimonian-Laird random-effects pooled correlation; ``random_ci`` its CI.
        q: Cochran's Q; ``q_p`` its chi-square p-value (k - 1 df); ``i2``: I^2 in [0, 1].
        tau2: Between-family variance of z.
        by_family: Each family's ``{"r", "n"}``.
        n: Questions over all families (each question counted once per family).
        n_images: Distinct images resampled by the bootstrap.
    """

    r: float
    fixed_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]
    random_r: float
    random_ci: tuple[float, float]
    q: float
    q_p: float
    i2: float
    tau2: float
    by_family: dict[str, dict[str, float]]
    n: int
    n_images: int


def _meta(r: np.ndarray, n: np.ndarray) -> tuple[float, float, float, float, float, float, float]:
    """(z_fixed, se_fixed, z_random, se_random, Q, tau2, I2) from per-family r and n."""
    z, w = np.arctanh(np.clip(r, -0.999999, 0.999999)), n - 3.0
    z_fixed = float((w * z).sum() / w.sum())
    q = float((w * (z - z_fixed) ** 2).sum())
    k = len(r)
    tau2 = float(max(0.0, (q - (k - 1)) / (w.sum() - (w**2).sum() / w.sum()))) if k > 1 else 0.0
    w_random = 1.0 / (1.0 / w + tau2)
    z_random = float((w_random * z).sum() / w_random.sum())
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    return z_fixed, float(w.sum() ** -0.5), z_random, float(w_random.sum() ** -0.5), q, tau2, i2


def pool_correlations(
    frames: Mapping[str, pd.DataFrame], column: str, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> PooledCorrelation:
    """Pool R_pb(``column``, correct) over families (one frame per family).

    Args:
        frames: Family name -> per-question frame with ``correct``, ``image`` and ``column``
            (rows where ``column`` is NaN are dropped).
        column: A measurement comparable across families (e.g. ``H_s_norm``, ``C_k``).
        n_resamples: Image-bootstrap resamples.
        seed: Bootstrap seed.
        level: Coverage.

    Returns:
        A :class:`PooledCorrelation`.

    Raises:
        DataError: with fewer than two families, a family with < 4 questions, a single
            outcome or a constant measurement.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> def fam(shift):
        ...     c = rng.random(120) > 0.3
        ...     return pd.DataFrame({"correct": c, "x": c + rng.normal(size=120) + shift,
        ...                          "image": np.repeat(np.arange(20), 6)})
        >>> pooled = pool_correlations({"a": fam(0), "b": fam(3)}, "x", n_resamples=100)
        >>> 0.2 < pooled.r < 0.6 and pooled.bootstrap_ci[0] < pooled.r < pooled.bootstrap_ci[1]
        True
    """
    if len(frames) < 2:
        raise DataError(f"pooling needs at least two families, got {len(frames)}; report the family's own R_pb.")
    data = {}
    for name, frame in frames.items():
        values = frame[column].to_numpy(dtype=float)
        keep = np.isfinite(values)
        correct, values, images = frame["correct"].to_numpy()[keep].astype(float), values[keep], frame["image"].to_numpy()[keep]
        if len(values) < 4 or np.isnan(point_biserial_r(correct, values)):
            raise DataError(f"R_pb({column}) is undefined for {name!r} (n={len(values)}, one outcome or a constant "
                            "measurement); pool only families where it is defined.")
        data[name] = (correct, values, images)
    r = np.array([point_biserial_r(c, v) for c, v, _ in data.values()])
    n = np.array([len(v) for _, v, _ in data.values()], dtype=float)
    z_fixed, se_fixed, z_random, se_random, q, tau2, i2 = _meta(r, n)
    crit = float(sps.norm.ppf(0.5 + level / 2))
    all_images = np.unique(np.concatenate([im for _, _, im in data.values()]))
    rng = np.random.default_rng(seed)
    picks = np.stack([np.bincount(rng.integers(0, len(all_images), size=len(all_images)), minlength=len(all_images))
                      for _ in range(n_resamples)])  # resample x image: times each image is drawn
    rs, ns = [], []
    for c, v, im in data.values():  # each family's rows weighted by their image's draws (shared across families)
        weights = picks[:, np.searchsorted(all_images, im)]
        ns.append(weights.sum(1))
        rs.append(np.where(ns[-1] >= 4, weighted_point_biserial_r(c, v, weights), np.nan))
    rs_all, ns_all = np.stack(rs, 1), np.stack(ns, 1).astype(float)
    pooled = [np.tanh(_meta(rb, nb)[0]) for rb, nb in zip(rs_all, ns_all) if np.isfinite(rb).all()]
    if not pooled:
        raise DataError(f"R_pb({column}) was undefined on every image resample; collect more images.")
    alpha = 50.0 * (1.0 - level)
    lo, hi = np.percentile(pooled, [alpha, 100.0 - alpha])
    return PooledCorrelation(
        r=float(np.tanh(z_fixed)), fixed_ci=(float(np.tanh(z_fixed - crit * se_fixed)), float(np.tanh(z_fixed + crit * se_fixed))),
        bootstrap_ci=(float(lo), float(hi)), random_r=float(np.tanh(z_random)),
        random_ci=(float(np.tanh(z_random - crit * se_random)), float(np.tanh(z_random + crit * se_random))),
        q=q, q_p=float(sps.chi2.sf(q, len(r) - 1)), i2=i2, tau2=tau2,
        by_family={name: {"r": float(ri), "n": int(ni)} for name, ri, ni in zip(data, r, n)},
        n=int(n.sum()), n_images=len(all_images),
    )
