"""Hidden-state probes on synthetic features with known structure."""

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from vlmlens.errors import DataError
from vlmlens.vrp.probes import (
    ProbeConfig,
    baseline_probes,
    probe_layers,
    rank_dimensions_l1,
    train_probe,
)

SHAPE_ERRORS = (DataError, TypeCheckError)  # TypeCheckError when runtime checking is on
FAST = ProbeConfig(n_resamples=100, n_permutations=30)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny MLPs train ~30x faster on one thread than on two contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _separable(n: int = 400, d: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x[:, 0] + 0.5 * x[:, 1] > 0
    x[:, 0] += np.where(y, 1.0, -1.0)  # a margin between the classes
    return x, y


def test_probe_config_validates_and_is_frozen() -> None:
    with pytest.raises(SHAPE_ERRORS, match=r"kind must be 'logistic' or 'mlp', got 'svm'|'svm'"):
        ProbeConfig(kind="svm")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"ProbeConfig.C must be > 0, got 0"):
        ProbeConfig(C=0)
    with pytest.raises(DataError, match=r"test_size must be in \(0, 1\), got 1.0"):
        ProbeConfig(test_size=1.0)
    with pytest.raises(DataError, match=r"ProbeConfig.mlp_epochs must be >= 1, got 0"):
        ProbeConfig(mlp_epochs=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAST.C = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        ProbeConfig("mlp")  # type: ignore[misc]


def test_logistic_probe_separates_and_its_permutation_null_does_not() -> None:
    x, y = _separable()
    res = train_probe(x, y, FAST)
    assert res.auroc.auroc > 0.99
    assert res.null is not None and res.null.n_permutations == 30
    assert 0.4 < res.null.mean < 0.6 and res.null.q95 < 0.7
    assert res.null.p_value == 1 / 31  # no permutation reaches the real probe
    assert (res.n_train, res.n_test, res.auroc.n) == (280, 120, 120)
    assert res.auroc.n_pos == round(120 * y.mean())  # stratified
    assert res.coef is not None and res.coef.shape == (10,)
    assert int(np.argmax(np.abs(res.coef))) == 0
    assert res.test_prob.shape == (120,) and ((res.test_prob > 0.5) == y[res.test_index]).mean() > 0.95


def test_permutation_null_of_uninformative_features_gives_a_uniform_p() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 5)), rng.random(200) > 0.5
    res = train_probe(x, y, FAST)
    assert res.null.p_value > 0.05 and abs(res.null.mean - 0.5) < 0.05


def test_probe_is_deterministic_under_its_seed() -> None:
    x, y = _separable(n=200, seed=1)
    first, again = train_probe(x, y, FAST), train_probe(x, y, FAST)
    assert first.auroc == again.auroc and first.null == again.null
    np.testing.assert_array_equal(first.coef, again.coef)
    other = train_probe(x, y, dataclasses.replace(FAST, seed=5))
    assert other.null != first.null


def test_seed_and_resamples_left_unset_come_from_the_caller() -> None:
    config = ProbeConfig()
    assert (config.seed, config.n_resamples) == (None, None)
    assert config.resolved(seed=4, n_resamples=10).seed == 4
    assert ProbeConfig(seed=2).resolved(seed=4, n_resamples=10).seed == 2  # an explicit seed wins


def test_mlp_probe_learns_a_separable_problem_deterministically(one_thread: None) -> None:
    x, y = _separable(n=200, d=8)
    config = ProbeConfig(kind="mlp", n_resamples=100, n_permutations=0, mlp_lr=3e-3)  # full batch
    state = torch.get_rng_state()
    res = train_probe(torch.tensor(x, dtype=torch.float32), torch.tensor(y), config)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert res.auroc.auroc > 0.95
    assert res.coef is None
    again = train_probe(x, y, config)
    assert res.auroc == again.auroc and res.null == again.null


def test_mlp_probe_solves_xor_where_the_linear_probe_cannot(one_thread: None) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(300, 2))
    y = (x[:, 0] > 0) ^ (x[:, 1] > 0)
    mlp = ProbeConfig(kind="mlp", mlp_lr=1e-2, mlp_epochs=60, mlp_hidden=32, mlp_batch_size=32, n_resamples=50,
                      n_permutations=0)
    assert train_probe(x, y, mlp).auroc.auroc > 0.9
    assert train_probe(x, y, FAST).auroc.auroc < 0.7


def test_probe_layers_finds_the_informative_layer() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 200, 6))
    y = feats[2, :, 0] > 0
    res = probe_layers(feats, y, FAST)
    assert res.best_layer == 2 and res.n == 200 and res.n_groups is None
    assert res.cv_auroc[2] > 0.95 and max(res.cv_auroc[i] for i in (0, 1, 3)) < 0.7
    assert res.per_layer[2].auroc.auroc > 0.95 and res.per_layer[2].null is None
    assert res.selected.auroc == res.per_layer[2].auroc and res.selected.null.p_value == 1 / 31
    assert res.concat_layers == (0, 1, 2, 3)  # fewer than five layers: all of them
    assert res.concat.coef is not None and res.concat.coef.shape == (24,)
    assert probe_layers(feats, y, FAST, concat_last=2).concat_layers == (2, 3)
    frame = res.to_frame()
    assert list(frame["features"]) == ["layer"] * 4 + ["concat"]
    assert frame["layer"].isna().tolist() == [False] * 4 + [True]
    assert frame.loc[2, "auroc"] == res.per_layer[2].auroc.auroc and frame.loc[2, "cv_auroc"] == res.cv_auroc[2]
    assert {"auroc_lo", "auroc_hi", "null_mean", "p_value", "n_train", "n_test"} <= set(frame.columns)


def _image_effects(n_images: int = 60, per_image: int = 6, seed: int = 0):
    """Correctness driven by the image, features that identify the image and nothing else."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_images), per_image)
    image_code = rng.normal(size=(n_images, 80))  # wider than the number of images: any labelling is learnable
    x = image_code[groups] + 0.05 * rng.normal(size=(len(groups), 80))
    y = (rng.random(n_images) > 0.5)[groups]
    return x, y, groups


def test_a_grouped_split_keeps_each_image_on_one_side_and_stops_image_memorisation() -> None:
    x, y, groups = _image_effects()
    config = ProbeConfig(n_resamples=100, n_permutations=20, C=10.0)
    leaky = train_probe(x, y, config)  # questions of one image on both sides: it learns the images
    grouped = train_probe(x, y, config, groups=groups)
    assert not set(groups[grouped.test_index]) & set(groups[np.setdiff1d(np.arange(len(y)), grouped.test_index)])
    assert leaky.auroc.auroc > 0.95
    assert grouped.auroc.auroc < 0.75 and grouped.null.p_value > 0.05
    assert grouped.auroc.clustered and not leaky.auroc.clustered
    assert grouped.n_test == 120  # the first of round(1 / 0.3) = 3 grouped folds: 20 of 60 images


def test_layer_selection_never_looks_at_the_held_out_part() -> None:
    """Changing only held-out features changes held-out AUROCs, never the CV scores or the chosen layer."""
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 150, 4))
    y = feats[1, :, 0] + rng.normal(size=150) > 0
    first = probe_layers(feats, y, FAST)
    test = first.selected.test_index
    moved = feats.copy()
    moved[:, test] = rng.normal(size=(3, len(test), 4))
    second = probe_layers(moved, y, FAST)
    assert second.cv_auroc == first.cv_auroc and second.best_layer == first.best_layer == 1
    assert second.selected.auroc.auroc != first.selected.auroc.auroc


def test_held_out_auroc_equals_sklearn_on_the_same_split() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    x, y = _separable(n=180, seed=2)
    x[:, 0] += np.random.default_rng(0).normal(scale=3.0, size=180)  # not separable any more
    x = x.astype(np.float32).astype(np.float64)  # the probes keep features in float32
    groups = np.repeat(np.arange(30), 6)
    res = train_probe(x, y, dataclasses.replace(FAST, seed=7), groups=groups)
    train, test = next(StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=7).split(x, y, groups))
    np.testing.assert_array_equal(np.sort(res.test_index), np.sort(test))
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(C=0.1, tol=1e-12, max_iter=10_000).fit(scaler.transform(x[train]), y[train])
    expected = roc_auc_score(y[test], model.decision_function(scaler.transform(x[test])))
    assert res.auroc.auroc == pytest.approx(expected, abs=1e-12)  # same ranking
    np.testing.assert_allclose(res.coef, model.coef_[0], atol=1e-6)  # our Newton fit, sklearn's objective
    np.testing.assert_allclose(res.test_prob, model.predict_proba(scaler.transform(x[test]))[:, 1], atol=1e-7)


def test_baselines_share_the_split_and_find_a_free_signal() -> None:
    x, y = _separable(n=200, seed=4)
    rng = np.random.default_rng(0)
    scores = {"confidence": y + 0.8 * rng.normal(size=200), "noise": rng.normal(size=200),
              "reversed": -(y + 0.8 * rng.normal(size=200))}
    res = baseline_probes(scores, y, FAST)
    probe = train_probe(x, y, FAST)
    for r in res.values():
        np.testing.assert_array_equal(r.test_index, probe.test_index)
    assert res["confidence"].auroc.auroc > 0.7 and res["confidence"].null.p_value < 0.05
    assert res["reversed"].auroc.auroc > 0.7  # the direction is learnt on the training part
    assert res["noise"].null.p_value > 0.05


def test_the_full_batch_mlp_takes_one_step_per_epoch(one_thread: None) -> None:
    """The workshop paper's probe is full batch: its result does not depend on a minibatch shuffle."""
    x, y = _separable(n=120, d=6)
    full = ProbeConfig(kind="mlp", n_resamples=20, n_permutations=0, mlp_epochs=5)
    assert full.mlp_batch_size is None
    a = train_probe(x, y, full)
    b = train_probe(x, y, dataclasses.replace(full, mlp_batch_size=len(y)))  # one batch of everything
    np.testing.assert_allclose(a.test_prob, b.test_prob, atol=1e-6)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([True] * 19 + [False]), r"needs >= 2 samples of each class .*'incorrect': 1"),
        (np.array([0, 1, 2] * 6 + [0, 1]), r"labels must be binary .* found values \[2\]"),
    ],
)
def test_train_probe_rejects_bad_labels(labels: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        train_probe(np.random.default_rng(0).normal(size=(20, 3)), labels, FAST)


def test_train_probe_rejects_bad_features() -> None:
    x, y = _separable(n=20)
    x[3, 1] = np.nan
    with pytest.raises(
        DataError, match=r"features has 1 non-finite values \(first at index \(3, 1\)"
    ):
        train_probe(x, y, FAST)
    with pytest.raises(SHAPE_ERRORS):
        train_probe(np.ones((19, 3)), y, FAST)
    with pytest.raises(DataError, match="concat_last must be >= 1, got 0"):
        probe_layers(np.ones((2, 20, 3)), y, FAST, concat_last=0)


def test_rank_dimensions_l1_puts_informative_dimensions_first() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    y = 2.0 * x[:, 3] + x[:, 6] + 0.3 * rng.normal(size=300) > 0
    order = rank_dimensions_l1(x, y)
    assert order[:2].tolist() == [3, 6]
    assert sorted(order.tolist()) == list(range(8)) and order.dtype == np.int64
    np.testing.assert_array_equal(order, rank_dimensions_l1(torch.tensor(x), torch.tensor(y)))


def test_rank_dimensions_l1_errors() -> None:
    with pytest.raises(DataError, match=r"labels hold a single class \(all False\)"):
        rank_dimensions_l1(np.ones((5, 2)), np.zeros(5, dtype=bool))
    with pytest.raises(DataError, match=r"C must be > 0, got -1"):
        rank_dimensions_l1(np.ones((5, 2)), np.array([0, 1, 0, 1, 0]), C=-1)


def test_the_permutation_null_exchanges_whole_images_and_keeps_its_level() -> None:
    """Labels and features both cluster by image but are independent: p <= 0.05 about 5% of the time.

    A question-level permutation made this null too narrow (about 19% rejections at 0.05).
    """
    config = ProbeConfig(n_resamples=20, n_permutations=49, C=0.1)
    rejections = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        groups = np.repeat(np.arange(40), 6)
        x = rng.normal(size=(40, 5))[groups] + 0.3 * rng.normal(size=(240, 5))
        y = (rng.random(40) < 0.5)[groups] ^ (rng.random(240) < 0.1)
        rejections += train_probe(x, y, config, groups=groups).null.p_value <= 0.05
    assert rejections / 60 <= 0.12
