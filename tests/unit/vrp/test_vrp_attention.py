"""Attention-map measurements on constructed maps with known answers."""

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from vlmlens.errors import DataError
from vlmlens.vrp.attention import (
    aggregate_attention,
    cluster_count,
    default_layers,
    entropy_evolution,
    object_attention_mass,
    spatial_entropy,
)

SHAPE_ERRORS = (DataError, TypeCheckError)  # TypeCheckError when runtime checking is on


def _one_hot(rows: int = 16, cols: int = 16) -> np.ndarray:
    m = np.zeros((rows, cols))
    m[5, 7] = 1.0
    return m


def _blobs(size: int, corners: list[tuple[int, int]], blob: int = 3) -> np.ndarray:
    m = np.zeros((size, size))
    for r, c in corners:
        m[r : r + blob, c : c + blob] = 1.0
    return m


# --- H_s ---------------------------------------------------------------------------------


def test_one_hot_map_has_zero_entropy() -> None:
    assert spatial_entropy(_one_hot()) == pytest.approx(0.0, abs=1e-8)
    assert spatial_entropy(_one_hot(), normalized=True) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("shape", [(16, 16), (24, 24), (3, 5)])
def test_uniform_map_has_entropy_log_n(shape: tuple[int, int]) -> None:
    m = np.full(shape, 0.3)  # unnormalised on purpose
    n = shape[0] * shape[1]
    assert spatial_entropy(m) == pytest.approx(np.log(n), abs=1e-6)
    assert spatial_entropy(m, normalized=True) == pytest.approx(1.0, abs=1e-6)


def test_entropy_of_two_equal_patches_is_log_two() -> None:
    m = np.zeros((4, 4))
    m[0, 0] = m[3, 3] = 2.0
    assert spatial_entropy(torch.tensor(m)) == pytest.approx(np.log(2), abs=1e-6)


@pytest.mark.parametrize(
    ("m", "match"),
    [
        (np.array([[0.5, -0.1], [0.3, 0.3]]), r"M has negative values \(min -0.1\)"),
        (np.array([[0.5, np.nan], [0.3, 0.3]]), r"M has 1 non-finite values"),
        (np.zeros((3, 3)), r"M has an all-zero map \(shape \(3, 3\)\)"),
    ],
)
def test_entropy_rejects_invalid_maps(m: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        spatial_entropy(m)


def test_entropy_rejects_wrong_rank_and_single_patch() -> None:
    with pytest.raises(SHAPE_ERRORS):
        spatial_entropy(np.ones(4))
    with pytest.raises(DataError, match=r"normalized H_s needs N >= 2 patches, got shape \(1, 1\)"):
        spatial_entropy(np.ones((1, 1)), normalized=True)


# --- C_k ---------------------------------------------------------------------------------


def test_two_separated_blobs_give_two_clusters() -> None:
    # 18 of 100 patches carry mass, so the 90th percentile lies on the blob value.
    assert cluster_count(_blobs(10, [(0, 0), (6, 6)])) == 2
    # 16x16: two 4x4 blobs are 32 of 256 patches (> 10%).
    assert cluster_count(_blobs(16, [(1, 1), (10, 10)], blob=4)) == 2


def test_one_blob_gives_one_cluster() -> None:
    assert cluster_count(_blobs(10, [(3, 3)], blob=4)) == 1


def test_hand_computed_clusters_with_a_noise_point() -> None:
    # 19 kept patches: two blobs of 9 and one isolated patch, which DBSCAN calls noise.
    m = _blobs(10, [(0, 0), (6, 6)])
    m[0, 9] = 1.0
    assert cluster_count(m) == 2
    # Diagonal neighbours are within eps=1.5, so touching blobs merge into one cluster.
    assert cluster_count(_blobs(10, [(0, 0), (3, 3)])) == 1


def test_tie_rule_keeps_every_patch_at_the_threshold() -> None:
    # One-hot 16x16: the 90th percentile is 0, every patch is >= 0, the whole grid is
    # one cluster. Same for small blobs covering < 10% of the grid, and a uniform map.
    assert cluster_count(_one_hot()) == 1
    assert cluster_count(_blobs(16, [(0, 0), (10, 10)])) == 1
    assert cluster_count(np.ones((16, 16))) == 1


def test_at_least_min_samples_patches_are_kept_so_small_grids_can_cluster() -> None:
    m = np.arange(100.0).reshape(10, 10)
    assert cluster_count(m) == 1  # values >= 89.1: the 10 patches of the last row
    assert cluster_count(m, percentile=99) == 1  # 99th percentile keeps 1 patch; the rule keeps the top 3, adjacent
    small = np.zeros((4, 4))
    small[0, 0], small[0, 1], small[1, 1] = 3.0, 2.0, 1.0  # a 4x4 grid: its top 10% is 2 patches
    assert cluster_count(small) == 1
    small[1, 1], small[3, 3] = 0.0, 1.0  # the third patch far away: DBSCAN calls all three noise
    assert cluster_count(small) == 0
    assert cluster_count(np.ones((1, 2))) == 0  # fewer patches than min_samples


def test_cluster_count_rejects_bad_parameters() -> None:
    with pytest.raises(DataError, match=r"percentile must be in \[0, 100\], got 120"):
        cluster_count(np.ones((4, 4)), percentile=120)
    with pytest.raises(DataError, match=r"eps must be > 0, got 0"):
        cluster_count(np.ones((4, 4)), eps=0)
    with pytest.raises(DataError, match="all-zero map"):
        cluster_count(np.zeros((4, 4)))


# --- dH_s --------------------------------------------------------------------------------


def test_entropy_evolution_matches_per_layer_entropy() -> None:
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = 1.0
    maps = np.stack([np.ones((4, 4)), _blobs(4, [(0, 0)], blob=2), one_hot])
    h, dh = entropy_evolution(maps)
    assert h.shape == (3,) and dh.shape == (2,)
    np.testing.assert_allclose(h, [np.log(16), np.log(4), 0.0], atol=1e-6)
    np.testing.assert_allclose(dh, np.diff(h))
    h_norm, _ = entropy_evolution(maps, normalized=True)
    np.testing.assert_allclose(h_norm, h / np.log(16))


def test_entropy_evolution_rejects_an_all_zero_layer() -> None:
    with pytest.raises(DataError, match="maps has an all-zero map"):
        entropy_evolution(np.stack([np.ones((2, 2)), np.zeros((2, 2))]))


# --- object mass -------------------------------------------------------------------------


def test_object_attention_mass() -> None:
    m = np.array([[1.0, 1.0], [2.0, 4.0]])
    assert object_attention_mass(m, np.array([[0, 0], [1, 1]])) == pytest.approx(0.75)
    assert object_attention_mass(m, np.ones((2, 2), dtype=bool)) == pytest.approx(1.0)


def test_object_attention_mass_errors() -> None:
    with pytest.raises(SHAPE_ERRORS):
        object_attention_mass(np.ones((2, 2)), np.ones((3, 3), dtype=bool))
    with pytest.raises(DataError, match="object_mask selects no patch"):
        object_attention_mass(np.ones((2, 2)), np.zeros((2, 2), dtype=bool))


# --- aggregation -------------------------------------------------------------------------


def test_default_layers_are_the_second_half() -> None:
    assert default_layers(32) == range(16, 32)
    assert default_layers(5) == range(2, 5)
    assert default_layers(1) == range(0, 1)


def test_aggregate_attention_averages_heads_and_default_layers() -> None:
    pattern = np.zeros((4, 2, 6))
    pattern[:2, :, 0] = 1.0  # first half of the layers: excluded by default
    pattern[2, 0, 1] = 1.0
    pattern[3, 1, 5] = 3.0
    m = aggregate_attention(pattern, (2, 3))
    np.testing.assert_allclose(m, [[0.0, 0.25, 0.0], [0.0, 0.0, 0.75]])  # row-major
    m_all = aggregate_attention(torch.tensor(pattern), (2, 3), layers=[0, 1, 2, 3])
    assert m_all[0, 0] == pytest.approx(4.0 / 8.0)
    assert m_all.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("grid", "layers", "match"),
    [
        ((2, 2), None, r"grid \(2, 2\) has 4 patches but pattern_rows has 6 image-token"),
        ((2, 3), [1, 4], r"layers \[4\] are out of range for 4 layers"),
        ((2, 3), [2, 2], r"layers has repeated indices \[2, 2\]"),
        ((2, 3), [], r"layers is empty"),
    ],
)
def test_aggregate_attention_errors(
    grid: tuple[int, int], layers: list[int] | None, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        aggregate_attention(np.ones((4, 2, 6)), grid, layers=layers)
