"""L2 logistic regression fitted by Newton's method, for many label vectors at once.

A permutation null refits the same probe on 100+ label permutations of the same features;
fitting them together as one batched Newton problem is two orders of magnitude faster than
100 calls to ``sklearn.linear_model.LogisticRegression`` (whose objective this minimises:
``C * sum(log-loss) + ||w||^2 / 2``, intercept not penalised; the tests compare the two).

When there are more features than examples the fit runs in the span of the examples
(``w = V z`` from the thin SVD of the features): the penalty makes any weight orthogonal
to that span zero, so the solution is the same, in at most n dimensions.
"""

import logging

import numpy as np
from jaxtyping import Bool, Float

from vlmlens.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["fit_logistic"]

_MAX_BATCH_CELLS = 2**26  # Hessian entries (batch * k * k) and weighted copies (batch * n * k) held at once


def _objective(z: np.ndarray, y: np.ndarray, theta: np.ndarray, C: float) -> np.ndarray:
    f = theta @ z.T  # (B, n)
    return C * np.logaddexp(0.0, -np.where(y, f, -f)).sum(1) + 0.5 * (theta[:, :-1] ** 2).sum(1)


def _newton(z: np.ndarray, y: np.ndarray, C: float, max_iter: int, tol: float) -> np.ndarray:
    """Minimise per row of ``y``: C * sum log-loss(z @ w + b) + |w|^2 / 2. ``z`` has a ones column last."""
    n_rows, k = y.shape[0], z.shape[1]
    theta = np.zeros((n_rows, k))
    ridge = np.ones(k)
    ridge[-1] = 0.0
    current = _objective(z, y, theta, C)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta @ z.T)))  # (B, n)
        grad = C * (p - y) @ z + ridge * theta
        if np.abs(grad).max() < tol:
            break
        weights = C * p * (1.0 - p)
        hessian = np.matmul((weights[:, :, None] * z).transpose(0, 2, 1), z) + np.diag(ridge + 1e-12)  # BLAS
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]
        scale = np.ones(n_rows)
        for _ in range(30):  # halve the step where the objective would rise
            trial = theta - scale[:, None] * step
            value = _objective(z, y, trial, C)
            worse = value > current + 1e-12 * np.abs(current)
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        keep = value > current + 1e-12 * np.abs(current)  # no halving helped: stay put
        theta, current = np.where(keep[:, None], theta, trial), np.where(keep, current, value)
    else:
        logger.warning("logistic fit: Newton stopped after %d iterations with a gradient of %.2g (tol %.2g); "
                       "raise max_iter or lower C", max_iter, float(np.abs(grad).max()), tol)
    return theta


def fit_logistic(
    x: Float[np.ndarray, "n d"], labels: Bool[np.ndarray, "batch n"], *, C: float, max_iter: int = 100,
    tol: float = 1e-9,
) -> tuple[Float[np.ndarray, "batch d"], Float[np.ndarray, " batch"]]:
    """Weights and intercepts of one L2 logistic regression per row of ``labels``, on shared features.

    Args:
        x: Features (already standardised if wanted), ``(n, d)``.
        labels: One 0/1 label vector per fit, ``(batch, n)``.
        C: Inverse penalty strength (sklearn's ``C``).
        max_iter: Newton iterations at most.
        tol: Stop when every gradient entry is below this.

    Returns:
        ``(weights (batch, d), intercepts (batch,))``.

    Raises:
        DataError: if ``C`` <= 0 or the shapes disagree.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(50, 3)); y = (x[:, 0] > 0)[None]
        >>> w, b = fit_logistic(x, y, C=1.0)
        >>> int(np.argmax(np.abs(w[0])))
        0
    """
    if not C > 0:
        raise DataError(f"C must be > 0, got {C}.")
    if labels.ndim != 2 or labels.shape[1] != x.shape[0]:
        raise DataError(f"labels must be (batch, n={x.shape[0]}), got shape {labels.shape}.")
    one_class = labels.all(1) | ~labels.any(1)
    if one_class.any():
        raise DataError(f"label row {int(np.argmax(one_class))} holds one class; a logistic fit needs both.")
    x = x.astype(np.float64)
    basis = None
    if x.shape[1] >= x.shape[0]:  # fit in the span of the examples
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        basis = vt[s > s.max() * 1e-10].T  # (d, r)
        x = x @ basis
    z = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    y = labels.astype(np.float64)
    chunk = max(1, _MAX_BATCH_CELLS // (z.shape[1] * max(z.shape)))
    theta = np.concatenate([_newton(z, y[i : i + chunk], C, max_iter, tol) for i in range(0, len(y), chunk)])
    weights, intercepts = theta[:, :-1], theta[:, -1]
    return (weights if basis is None else weights @ basis.T), intercepts
