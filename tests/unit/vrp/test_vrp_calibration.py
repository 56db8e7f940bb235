"""Calibration (ECE, reliability bins) and the image-clustered bootstraps, against independent computations."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from vlmlens.errors import DataError
from vlmlens.vrp.calibration import calibration, expected_calibration_error
from vlmlens.vrp.splits import cv_folds, holdout
from vlmlens.vrp.stats import auroc_ci, bootstrap_ci, point_biserial


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, size=n)
    correct = rng.random(n) < conf - 0.15  # right 15 points less often than it claims
    return conf, correct


def test_ece_and_bins_equal_sklearns_calibration_curve() -> None:
    conf, correct = _overconfident()
    res = calibration(conf, correct, n_bins=10, n_resamples=100)
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    np.testing.assert_allclose([b.accuracy for b in res.bins], prob_true, atol=1e-12)
    np.testing.assert_allclose([b.confidence for b in res.bins], prob_pred, atol=1e-12)
    assert [b.n for b in res.bins] == counts.tolist()
    assert res.ece == pytest.approx(float(np.sum(counts / len(conf) * np.abs(prob_true - prob_pred))), abs=1e-12)
    assert 0.1 < res.ece < 0.2 and res.ci[0] < res.ece < res.ci[1]
    assert res.mean_confidence - res.accuracy == pytest.approx(0.15, abs=0.04)  # over-confident


def test_a_calibrated_signal_has_a_small_ece_and_edges_go_to_the_last_bin() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=4000)
    assert calibration(conf, rng.random(4000) < conf, n_resamples=50).ece < 0.03
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0]), 10) == 0.0
    res = calibration(np.array([1.0, 1.0, 0.95]), np.array([1, 0, 1]), n_resamples=20)
    assert len(res.bins) == 1 and res.bins[0].hi == 1.0 and res.bins[0].n == 3


def test_calibration_rejects_what_is_not_a_probability() -> None:
    with pytest.raises(DataError, match=r"confidence must lie in \[0, 1\].*found \[-0.5\].*not logits"):
        calibration(np.array([0.2, -0.5]), np.array([1, 0]))
    with pytest.raises(DataError, match="n_bins must be >= 1, got 0"):
        calibration(np.array([0.2, 0.5]), np.array([1, 0]), n_bins=0)


def _clustered_outcomes(n_images: int = 40, per_image: int = 6, seed: int = 0):
    """A score and an outcome that both move with the image: questions of one image are not independent."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_images), per_image)
    image_effect = rng.normal(size=n_images)[groups]
    score = image_effect + 0.3 * rng.normal(size=len(groups))
    correct = image_effect + 0.3 * rng.normal(size=len(groups)) > 0
    return score, correct, groups


def test_cluster_bootstrap_resamples_whole_images_and_is_wider() -> None:
    score, correct, groups = _clustered_outcomes()
    iid = auroc_ci(correct, score, n_resamples=400)
    clustered = auroc_ci(correct, score, n_resamples=400, groups=groups)
    assert clustered.auroc == iid.auroc and clustered.clustered
    assert clustered.ci[1] - clustered.ci[0] > 1.3 * (iid.ci[1] - iid.ci[0])
    r_iid = point_biserial(correct, score, n_resamples=400)
    r_cl = point_biserial(correct, score, n_resamples=400, groups=groups)
    assert r_cl.r == r_iid.r and r_cl.fisher_ci == r_iid.fisher_ci and r_cl.clustered
    assert r_cl.bootstrap_ci[1] - r_cl.bootstrap_ci[0] > 1.3 * (r_iid.bootstrap_ci[1] - r_iid.bootstrap_ci[0])


def test_a_cluster_resample_is_a_multiset_of_whole_images() -> None:
    seen = []

    def record(g: np.ndarray) -> float:
        seen.append(g.copy())
        return float(len(g))

    groups = np.repeat(np.array([7, 3, 9]), [2, 3, 4])
    bootstrap_ci(record, groups, n_resamples=30, groups=groups)
    for g in seen:
        values, counts = np.unique(g, return_counts=True)
        sizes = {7: 2, 3: 3, 9: 4}
        assert all(c % sizes[v] == 0 for v, c in zip(values, counts))  # whole images only
        assert sum(c // sizes[v] for v, c in zip(values, counts)) == 3  # as many images as there are
    with pytest.raises(DataError, match="at least two clusters, got 1"):
        bootstrap_ci(np.mean, np.ones(4), groups=np.zeros(4))


def test_splits_keep_images_whole_and_stratify() -> None:
    y = np.tile([True, False, True, False, True, False], 30)
    groups = np.repeat(np.arange(30), 6)
    train, test = holdout(y, groups, test_size=0.3, seed=0)
    assert not set(groups[train]) & set(groups[test]) and len(test) == 60  # 10 of 30 images
    folds = list(cv_folds(y[train], groups[train], n_folds=5, repeats=2, seed=0))
    assert len(folds) == 10
    for fit, val in folds:
        assert not set(groups[train][fit]) & set(groups[train][val])
    assert not np.array_equal(folds[0][1], folds[5][1])  # each repeat shuffles anew
    few = list(cv_folds(y[:24], groups[:24], n_folds=5, repeats=1, seed=0))  # 4 images: one fold each
    assert len(few) == 4 and all(len(np.unique(groups[:24][val])) == 1 for _, val in few)
    with pytest.raises(DataError, match=r"at least 2 groups \(images\) in the training part, got 1"):
        list(cv_folds(y[:6], groups[:6], n_folds=5, repeats=1, seed=0))
    with pytest.raises(DataError, match=r"3 grouped folds need at least 3 groups \(images\), got 2"):
        holdout(y[:12], groups[:12], test_size=0.3, seed=0)
    with pytest.raises(DataError, match=r">= 5 examples of each outcome.*got 2"):
        list(cv_folds(np.array([1, 1, 1, 1, 1, 0, 0] * 2)[:9], None, n_folds=5, repeats=1, seed=0))


@pytest.mark.parametrize(("n", "d"), [(60, 1), (80, 12), (40, 100)])  # fewer examples than features too
def test_batched_newton_logistic_equals_sklearn(n: int, d: int) -> None:
    from sklearn.linear_model import LogisticRegression

    from vlmlens.vrp.logistic import fit_logistic

    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d))
    y = x[:, 0] + rng.normal(size=n) > 0.2
    labels = np.stack([y, rng.permutation(y), rng.permutation(y)])
    weights, intercepts = fit_logistic(x, labels, C=0.1)
    for row, w, b in zip(labels, weights, intercepts):
        model = LogisticRegression(C=0.1, tol=1e-12, max_iter=10_000).fit(x, row)
        np.testing.assert_allclose(w, model.coef_[0], atol=1e-6)
        assert b == pytest.approx(model.intercept_[0], abs=1e-6)


def test_mcnemar_drop_ci_is_exact_and_never_empty() -> None:
    from scipy.stats import binomtest

    from vlmlens.vrp.stats import mcnemar_exact

    before = np.r_[np.ones(50), np.zeros(10)].astype(bool)
    after = before.copy()
    after[:7] = False  # b = 7
    after[50:52] = True  # c = 2
    res = mcnemar_exact(before, after)
    cp_b = binomtest(7, 60).proportion_ci(0.975, method="exact")
    cp_c = binomtest(2, 60).proportion_ci(0.975, method="exact")
    lo, hi = res.drop_ci_pp
    assert lo == pytest.approx(100 * (cp_b.low - cp_c.high)) and hi == pytest.approx(100 * (cp_b.high - cp_c.low))
    assert lo < res.drop_pp < hi
    none = mcnemar_exact(before, before)  # no discordant pair: the Wald interval was [0, 0]
    assert none.drop_ci_pp[0] < -5 and none.drop_ci_pp[1] > 5
    rng = np.random.default_rng(0)  # coverage >= 95% on paired data with a true drop of 5 points
    covered = 0
    for _ in range(300):
        u = rng.random(200)
        b_true, c_true = u < 0.08, (u >= 0.08) & (u < 0.11)
        x = np.ones(200, dtype=bool)
        y = x.copy()
        y[b_true] = False
        xx = x.copy()
        xx[c_true] = False  # c: wrong before, right after
        lo, hi = mcnemar_exact(xx, y & ~c_true | c_true).drop_ci_pp
        covered += lo <= 5.0 <= hi
    assert covered / 300 >= 0.95
