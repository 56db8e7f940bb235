"""Hidden-state probes on synthetic features with known structure."""

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from vlmlens.errors import DataError
from vlmlens.vrp.probes import ProbeConfig, probe_layers, rank_dimensions_l1, train_probe

SHAPE_ERRORS = (DataError, TypeCheckError)  # TypeCheckError when runtime checking is on
FAST = ProbeConfig(n_resamples=100)


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


def test_logistic_probe_separates_and_the_shuffled_control_does_not() -> None:
    x, y = _separable()
    res = train_probe(x, y, FAST)
    assert res.auroc.auroc > 0.99
    assert 0.35 < res.shuffled_auroc.auroc < 0.65
    assert res.shuffled_auroc.ci[0] < 0.5 < res.shuffled_auroc.ci[1]
    assert (res.n_train, res.n_test, res.auroc.n) == (280, 120, 120)
    assert res.auroc.n_pos == round(120 * y.mean())  # stratified
    assert res.coef is not None and res.coef.shape == (10,)
    assert int(np.argmax(np.abs(res.coef))) == 0


def test_probe_is_deterministic_under_its_seed() -> None:
    x, y = _separable(n=200, seed=1)
    first, again = train_probe(x, y, FAST), train_probe(x, y, FAST)
    assert first.auroc == again.auroc and first.shuffled_auroc == again.shuffled_auroc
    np.testing.assert_array_equal(first.coef, again.coef)
    other = train_probe(x, y, dataclasses.replace(FAST, seed=5))
    assert other.shuffled_auroc != first.shuffled_auroc


def test_mlp_probe_learns_a_separable_problem_deterministically(one_thread: None) -> None:
    x, y = _separable(n=200, d=8)
    config = ProbeConfig(kind="mlp", n_resamples=100)
    state = torch.get_rng_state()
    res = train_probe(torch.tensor(x, dtype=torch.float32), torch.tensor(y), config)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert res.auroc.auroc > 0.95
    assert res.coef is None
    again = train_probe(x, y, config)
    assert res.auroc == again.auroc and res.shuffled_auroc == again.shuffled_auroc


def test_mlp_probe_solves_xor_where_the_linear_probe_cannot(one_thread: None) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(300, 2))
    y = (x[:, 0] > 0) ^ (x[:, 1] > 0)
    mlp = ProbeConfig(kind="mlp", mlp_lr=1e-2, mlp_epochs=60, mlp_hidden=32, n_resamples=50)
    assert train_probe(x, y, mlp).auroc.auroc > 0.9
    assert train_probe(x, y, FAST).auroc.auroc < 0.7


def test_probe_layers_finds_the_informative_layer() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 200, 6))
    y = feats[2, :, 0] > 0
    res = probe_layers(feats, y, FAST)
    assert res.best_layer == 2 and res.n == 200
    assert res.per_layer[2].auroc.auroc > 0.95
    assert res.concat_layers == (0, 1, 2, 3)  # fewer than five layers: all of them
    assert res.concat.coef is not None and res.concat.coef.shape == (24,)
    assert probe_layers(feats, y, FAST, concat_last=2).concat_layers == (2, 3)
    frame = res.to_frame()
    assert list(frame["features"]) == ["layer"] * 4 + ["concat"]
    assert frame["layer"].isna().tolist() == [False] * 4 + [True]
    assert frame.loc[2, "auroc"] == res.per_layer[2].auroc.auroc
    assert {"auroc_lo", "auroc_hi", "shuffled_auroc", "n_train", "n_test"} <= set(frame.columns)


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
