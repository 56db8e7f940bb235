"""A sparse probe that chooses exactly ``k`` units: the L1 regularisation path.

An L1-penalised logistic probe keeps fewer units the stronger its penalty. Walking the
penalty down from the point where every weight is 0 (``l1_min_c``), units enter the probe
one after another; the order of entry ranks them, and the first point where ``k`` or more
are in chooses the top ``k``. A probe that keeps no unit is never returned as a ranking:
if the path cannot reach ``k`` units the function raises.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 30))
    >>> y = (x[:, 4] - x[:, 17] > 0).astype(int)
    >>> path = l1_path(x, y, k=2)
    >>> sorted(path.order[:2].tolist()), path.n_selected >= 2
    ([4, 17], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sklearn
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import l1_min_c

from vlmlens.errors import InputError

__all__ = ["L1Path", "l1_logistic", "l1_path"]


def l1_logistic(C: float, seed: int = 0) -> LogisticRegression:
    """An L1-penalised logistic regression (liblinear), spelled for the installed scikit-learn."""
    version = tuple(int(v) for v in sklearn.__version__.split(".")[:2])
    if version >= (1, 8):  # 1.8 deprecated `penalty` in favour of `l1_ratio`
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", max_iter=2000, random_state=seed)
    return LogisticRegression(C=C, penalty="l1", solver="liblinear", max_iter=2000, random_state=seed)


@dataclass(frozen=True)
class L1Path:
    """Where each unit enters the L1 path.

    Attributes:
        order: unit indices, first to enter first; units that never entered follow, by the
            magnitude of their weight in the least-penalised probe fitted.
        entry: per unit, ``log10(C / C_min)`` where it entered (``inf`` if never).
        C: the inverse penalty at which ``k`` or more units were first in.
        n_selected: units with a non-zero weight at ``C``.
    """

    order: Int[np.ndarray, " unit"]
    entry: Float[np.ndarray, " unit"]
    C: float
    n_selected: int


def l1_path(x: Float[np.ndarray, "sample column"], y: Int[np.ndarray, " sample"], k: int, *,
            groups: Int[np.ndarray, " column"] | None = None, steps_per_decade: int = 8, max_decades: float = 6.0,
            seed: int = 0) -> L1Path:
    """Rank units by their entry on the L1 path of a logistic probe (standardised inputs).

    Args:
        x: one column per unit, or several per unit with ``groups``.
        y: the 0/1 target.
        k: the path stops once ``k`` units are in.
        groups: the unit of each column (e.g. a head's ``d_head`` dimensions); a unit enters
            with its first column. Default: each column is a unit.
        steps_per_decade: penalty steps per factor of 10 in ``C``.
        max_decades: how far past ``C_min`` the path may go.
        seed: the solver's seed.

    Raises:
        InputError: on a single-class target, mismatched shapes, ``k`` out of range, or a
            path that keeps fewer than ``k`` units even at the weakest penalty tried.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y).astype(int)
    if x.ndim != 2 or len(x) != len(y):
        raise InputError(f"the probe needs features (sample, unit) and one label per sample, got {x.shape}, {y.shape}")
    if len(np.unique(y)) != 2:
        raise InputError(f"the probe's target has a single class ({np.unique(y).tolist()}); nothing to separate")
    group = np.arange(x.shape[1]) if groups is None else np.asarray(groups).astype(int)
    if group.shape != (x.shape[1],):
        raise InputError(f"groups needs one unit id per column ({x.shape[1]}), got shape {group.shape}")
    _, group = np.unique(group, return_inverse=True)
    n_units = int(group.max()) + 1
    if not 1 <= k <= n_units:
        raise InputError(f"k must be in 1..{n_units} (the number of units), got {k}")
    z = StandardScaler().fit_transform(x)
    z = np.nan_to_num(z)  # constant units standardise to 0
    c_min = float(l1_min_c(z, y, loss="log"))
    entry = np.full(n_units, np.inf)
    last_coef = np.zeros(n_units)
    chosen_c, n_selected = None, 0
    for step in range(int(max_decades * steps_per_decade) + 1):
        decades = step / steps_per_decade
        columns = np.abs(l1_logistic(c_min * 10**decades, seed).fit(z, y).coef_[0])
        coef = np.zeros(n_units)
        np.maximum.at(coef, group, columns)  # a unit's weight: its largest column
        fresh = (coef > 0) & np.isinf(entry)
        if fresh.any():  # units entering at the same step: the larger weight first
            entry[fresh] = decades - 1e-6 * coef[fresh] / coef[fresh].max()
        last_coef = coef
        n_selected = int((coef > 0).sum())
        if n_selected >= k:
            chosen_c = c_min * 10**decades
            break
    if chosen_c is None:
        raise InputError(f"the L1 path kept only {n_selected} of the k={k} units asked for, even at C = "
                         f"{10**max_decades:g} x C_min; ask for fewer units or give the probe more questions")
    never = np.isinf(entry)
    order = np.lexsort((np.arange(len(entry)), -last_coef, np.where(never, np.inf, entry)))
    return L1Path(order=order.astype(np.int64), entry=entry, C=chosen_c, n_selected=n_selected)
