"""Statistics: pinned values and agreement with scipy / sklearn."""

import dataclasses

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from vlmlens.errors import DataError
from vlmlens.vrp.stats import (
    AUROC,
    Correlation,
    as_binary,
    as_finite,
    auroc_ci,
    bootstrap_ci,
    check_same_length,
    fisher_ci,
    mcnemar_exact,
    point_biserial,
    rank_auroc,
)

SHAPE_ERRORS = (DataError, TypeCheckError)  # TypeCheckError when runtime checking is on


def _rounded(ci: tuple[float, float]) -> tuple[float, float]:
    return (round(ci[0], 3), round(ci[1], 3))


# --- fisher_ci ---------------------------------------------------------------------------


def test_fisher_ci_reproduces_the_paper_ck_interval() -> None:
    assert _rounded(fisher_ci(0.001, 3090)) == (-0.034, 0.036)


def test_fisher_ci_for_hs_r_as_printed() -> None:
    # r = -0.012 exactly gives [-0.047, 0.023]; the paper prints [-0.047, 0.024], which is
    # what its unrounded r (e.g. -0.0116, printed as -0.012) gives.
    assert _rounded(fisher_ci(-0.012, 3090)) == (-0.047, 0.023)
    assert round(-0.0116, 3) == -0.012
    assert _rounded(fisher_ci(-0.0116, 3090)) == (-0.047, 0.024)


def test_fisher_ci_matches_the_formula() -> None:
    z = sps.norm.ppf(0.95)  # level 0.90
    lo, hi = fisher_ci(0.5, 28, level=0.90)
    assert lo == pytest.approx(np.tanh(np.arctanh(0.5) - z / 5))
    assert hi == pytest.approx(np.tanh(np.arctanh(0.5) + z / 5))
    assert fisher_ci(1.0, 10) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("r", "n", "level", "match"),
    [
        (0.1, 3, 0.95, r"needs n > 3 pairs, got n=3"),
        (1.5, 100, 0.95, r"r must be in \[-1, 1\], got 1.5"),
        (0.1, 100, 1.0, r"level must be in \(0, 1\), got 1.0"),
    ],
)
def test_fisher_ci_errors(r: float, n: int, level: float, match: str) -> None:
    with pytest.raises(DataError, match=match):
        fisher_ci(r, n, level)


# --- bootstrap_ci ------------------------------------------------------------------------


def test_bootstrap_ci_resamples_pairs_jointly() -> None:
    b = np.random.default_rng(1).normal(size=50)
    # a - b is constant only if both arrays are indexed by the same resample.
    assert bootstrap_ci(lambda x, y: np.mean(x - y), b + 1.0, b, n_resamples=100) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
    )


def test_bootstrap_ci_is_deterministic_under_its_seed() -> None:
    x = np.random.default_rng(2).normal(size=40)
    first = bootstrap_ci(np.mean, x, n_resamples=200, seed=3)
    assert first == bootstrap_ci(np.mean, x, n_resamples=200, seed=3)
    assert first != bootstrap_ci(np.mean, x, n_resamples=200, seed=4)
    assert first[0] < x.mean() < first[1]


def test_bootstrap_ci_errors() -> None:
    with pytest.raises(DataError, match="at least one array"):
        bootstrap_ci(np.mean)
    with pytest.raises(DataError, match=r"same length\), got lengths \{'arrays\[0\]': 3"):
        bootstrap_ci(lambda a, b: 0.0, np.ones(3), np.ones(4))
    with pytest.raises(DataError, match="undefined on all 20 bootstrap resamples"):
        bootstrap_ci(lambda a: float("nan"), np.ones(5), n_resamples=20)


# --- point_biserial ----------------------------------------------------------------------


def test_point_biserial_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    x = 0.5 * y + rng.normal(size=300)
    res = point_biserial(y, x, n_resamples=300)
    ref = sps.pointbiserialr(y, x)
    assert res.r == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue)
    assert res.n == 300
    assert res.fisher_ci == fisher_ci(res.r, 300)
    assert res.bootstrap_ci[0] < res.r < res.bootstrap_ci[1]
    assert res == point_biserial(y, x, n_resamples=300)  # seeded


@pytest.mark.parametrize("clustered", [False, True])
def test_point_biserial_bootstrap_is_scipy_on_each_resample(clustered: bool) -> None:
    """The vectorised bootstrap (row counts) gives scipy's r on every resample, undefined ones included."""
    from vlmlens.vrp.stats import (
        bootstrap_weights,
        point_biserial_r,
        weighted_point_biserial_r,
    )

    rng = np.random.default_rng(3)
    n = 24
    y = np.isin(np.arange(n), [0, 1, 9])  # three positives in two clusters: some resamples hold one class
    x = np.round(rng.normal(size=n), 1)
    x[:6] = 0.5  # a block of ties: some cluster resamples see a constant measurement
    groups = np.repeat(np.arange(n // 3), 3) if clustered else None
    weights = bootstrap_weights(n, 400, seed=1, groups=groups)
    got = weighted_point_biserial_r(y, x, weights)
    rows = [np.repeat(np.arange(n), w) for w in weights]
    want = np.array([sps.pointbiserialr(y[i], x[i]).statistic if 0 < y[i].sum() < len(i) and np.ptp(x[i]) > 0
                     else np.nan for i in rows])
    assert np.isnan(got).sum() > 0 and np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=1e-12)
    # The same resamples as the generic bootstrap: the CI equals it up to rounding.
    res = point_biserial(y, x, n_resamples=400, seed=1, groups=groups)
    slow = bootstrap_ci(point_biserial_r, y, x, n_resamples=400, seed=1, groups=groups)
    np.testing.assert_allclose(res.bootstrap_ci, slow, atol=1e-12)


def test_point_biserial_accepts_torch_and_01_ints() -> None:
    y = np.array([0, 1] * 10)
    x = np.arange(20.0)
    from_torch = point_biserial(torch.tensor(y), torch.tensor(x), n_resamples=50)
    assert from_torch == point_biserial(y.astype(bool), x, n_resamples=50)


def test_point_biserial_errors() -> None:
    x = np.arange(6.0)
    with pytest.raises(DataError, match=r"single class \(all True\)"):
        point_biserial(np.ones(6, dtype=bool), x)
    with pytest.raises(
        DataError, match=r"binary must be binary \(bool or 0/1\), found values \[2\]"
    ):
        point_biserial(np.array([0, 1, 2, 0, 1, 0]), x)
    with pytest.raises(DataError, match="continuous is constant"):
        point_biserial(np.array([0, 1] * 3), np.ones(6))
    with pytest.raises(DataError, match=r"non-finite values \(first at index \(2,\): nan\)"):
        point_biserial(np.array([0, 1] * 3), np.array([0, 1, np.nan, 2, 3, 4]))
    with pytest.raises(SHAPE_ERRORS):
        point_biserial(np.array([0, 1] * 3), np.arange(5.0))


def test_results_are_frozen_and_keyword_only() -> None:
    res = Correlation(r=0.1, p=0.5, n=10, fisher_ci=(-0.5, 0.6), bootstrap_ci=(-0.4, 0.5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.r = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError):
        AUROC(0.5, (0.4, 0.6), 10, 5, 5)  # type: ignore[misc]
    with pytest.raises(DataError, match=r"AUROC.ci must be ordered"):
        AUROC(auroc=0.5, ci=(0.6, 0.4), n=10, n_pos=5, n_neg=5)


# --- auroc_ci ----------------------------------------------------------------------------


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(y + rng.normal(size=200), 1)  # rounding makes ties
    res = auroc_ci(y, s, n_resamples=200)
    assert res.auroc == pytest.approx(roc_auc_score(y, s))
    assert (res.n, res.n_pos, res.n_neg) == (200, int(y.sum()), int((~y).sum()))
    assert res.ci[0] < res.auroc < res.ci[1]
    assert res == auroc_ci(y, s, n_resamples=200)  # seeded


def test_rank_auroc_equals_sklearn_on_each_row() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random((20, 30)) < 0.5
    scores = rng.integers(0, 5, size=(20, 30)).astype(float)
    expected = [roc_auc_score(lab, sc) for lab, sc in zip(labels, scores, strict=True)]
    np.testing.assert_allclose(rank_auroc(labels, scores), expected)


def test_auroc_counts_single_class_resamples() -> None:
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    res = auroc_ci(y, s, n_resamples=500, seed=7)
    idx = np.random.default_rng(7).integers(0, 6, size=(500, 6))
    assert res.n_skipped == int((y[idx].sum(axis=1) == 0).sum()) > 0
    assert res.auroc == res.ci[0] == res.ci[1] == 1.0


def test_auroc_errors() -> None:
    with pytest.raises(DataError, match=r"single class \(0 positives of n=3\)"):
        auroc_ci(np.zeros(3, dtype=bool), np.arange(3.0))
    with pytest.raises(DataError, match=r"labels must be binary .* found values \[0.5\]"):
        auroc_ci(np.array([0.0, 0.5, 1.0]), np.arange(3.0))
    with pytest.raises(SHAPE_ERRORS):
        auroc_ci(np.zeros((2, 2), dtype=bool), np.arange(4.0))


def test_validators_name_the_shape() -> None:
    with pytest.raises(DataError, match=r"M must have 2 axes, got shape \(3,\)"):
        as_finite(np.ones(3), name="M", ndim=2)
    with pytest.raises(DataError, match=r"labels must be 1-D, got shape \(2, 2\)"):
        as_binary(np.ones((2, 2)), name="labels")
    with pytest.raises(DataError, match=r"paired \(same length\), got lengths \{'a': 3, 'b': 2\}"):
        check_same_length(a=np.ones(3), b=np.ones(2))
    with pytest.raises(DataError, match=r"must be bool or 0/1 numbers, got dtype <U3"):
        as_binary(np.array(["yes", "no"]), name="labels")


# --- mcnemar_exact -----------------------------------------------------------------------


def _paired(b: int, c: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    before = np.array([1] * b + [0] * c + [1] * both + [0] * neither, dtype=bool)
    after = np.array([0] * b + [1] * c + [1] * both + [0] * neither, dtype=bool)
    return before, after


@pytest.mark.parametrize(("b", "c"), [(3, 0), (10, 2), (2, 10), (7, 7), (25, 9), (1, 0)])
def test_mcnemar_matches_scipy_binomtest(b: int, c: int) -> None:
    before, after = _paired(b, c, both=20, neither=5)
    res = mcnemar_exact(before, after)
    assert (res.b, res.c, res.n) == (b, c, b + c + 25)
    assert res.p_value == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue)
    assert res.accuracy_before == pytest.approx((b + 20) / res.n)
    assert res.drop_pp == pytest.approx(100 * (b - c) / res.n)


def test_mcnemar_without_discordant_pairs_has_p_one() -> None:
    before, after = _paired(0, 0, both=4, neither=3)
    res = mcnemar_exact(before, after)
    assert (res.b, res.c, res.p_value, res.drop_pp) == (0, 0, 1.0, 0.0)


def test_mcnemar_errors() -> None:
    with pytest.raises(SHAPE_ERRORS):
        mcnemar_exact(np.ones(3, dtype=bool), np.ones(2, dtype=bool))
    with pytest.raises(DataError, match="after_correct must be binary"):
        mcnemar_exact(np.ones(3, dtype=bool), np.array([0, 1, 3]))
    with pytest.raises(DataError, match="empty inputs"):
        mcnemar_exact(np.ones(0, dtype=bool), np.ones(0, dtype=bool))
