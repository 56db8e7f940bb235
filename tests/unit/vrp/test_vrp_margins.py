"""Logit-lens margins and the peak visual layer on constructed logits."""

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from vlmlens.errors import DataError
from vlmlens.vrp.margins import margin_gain, peak_visual_layer, truth_margin, yes_no_margin

SHAPE_ERRORS = (DataError, TypeCheckError)  # TypeCheckError when runtime checking is on

# 3 layers x 6 tokens; "yes" variants are ids {1, 2}, "no" variants {3, 4}.
LOGITS = np.array(
    [
        [0.0, 1.0, 0.5, 2.0, 1.5, 3.0],  # token 5 leads
        [0.0, 2.0, 4.0, 1.0, 3.5, 0.0],  # a yes variant leads
        [9.0, -1.0, 0.0, 5.0, 6.0, 0.0],  # token 0 leads; "no" beats "yes" by 6
    ]
)


def test_truth_margin_by_hand() -> None:
    # max over {1, 2} minus max over {0, 3, 4, 5}
    np.testing.assert_allclose(truth_margin(LOGITS, {1, 2}), [1.0 - 3.0, 4.0 - 3.5, 0.0 - 9.0])
    np.testing.assert_allclose(truth_margin(LOGITS, [0]), [0.0 - 3.0, 0.0 - 4.0, 9.0 - 6.0])


def test_yes_no_margin_by_hand() -> None:
    np.testing.assert_allclose(yes_no_margin(LOGITS, [1, 2], (3, 4)), [-1.0, 0.5, -6.0])


def test_margins_accept_batches_and_tensors() -> None:
    batch = np.stack([LOGITS, LOGITS + 1.0, -LOGITS])
    single = np.stack([truth_margin(x, {1, 2}) for x in batch])
    np.testing.assert_allclose(truth_margin(batch, {1, 2}), single)
    half = torch.tensor(batch, dtype=torch.bfloat16)  # the values are exact in bfloat16
    from_torch = yes_no_margin(half, torch.tensor([1, 2]), [3, 4])
    assert from_torch.shape == (3, 3)
    np.testing.assert_allclose(from_torch, yes_no_margin(batch, [1, 2], [3, 4]))


def test_margins_allow_minus_infinity() -> None:
    logits = np.array([[2.0, -np.inf, 1.0]])
    assert truth_margin(logits, [0]).tolist() == [1.0]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([], r"correct_ids is empty"),
        ([1, 6], r"correct_ids has ids \[6\] outside the vocabulary \[0, 6\)"),
        ([0, 1, 2, 3, 4, 5], r"correct_ids cover the whole vocabulary"),
        (np.array([0.5]), r"correct_ids must be integer token ids, got dtype float64"),
    ],
)
def test_truth_margin_rejects_bad_ids(ids: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        truth_margin(LOGITS, ids)  # type: ignore[arg-type]


def test_margin_errors() -> None:
    with pytest.raises(DataError, match=r"yes_ids and no_ids share ids \[2\]"):
        yes_no_margin(LOGITS, [1, 2], [2, 3])
    with pytest.raises(DataError, match=r"logits contain 1 NaN values"):
        truth_margin(np.where(np.eye(3, 6) > 0.5, np.nan, 0.0)[:1], [1])
    with pytest.raises(SHAPE_ERRORS):
        truth_margin(np.ones(6), [1])


def test_peak_visual_layer() -> None:
    rng = np.random.default_rng(0)
    blank = rng.normal(size=(20, 5))
    gain = np.array([0.0, 0.5, 0.2, 3.0, 1.0])
    real = blank + gain + rng.normal(scale=0.1, size=(20, 5))
    assert peak_visual_layer(real, blank) == 3
    np.testing.assert_allclose(margin_gain(real, blank), gain, atol=0.1)


def test_peak_visual_layer_takes_the_first_of_tied_layers() -> None:
    assert peak_visual_layer(np.array([[1.0, 2.0, 2.0]]), np.zeros((1, 3))) == 1


def test_margin_gain_errors() -> None:
    with pytest.raises(SHAPE_ERRORS):
        margin_gain(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(DataError, match="margin_real is empty"):
        margin_gain(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(DataError, match="margin_blank has 1 non-finite values"):
        margin_gain(np.zeros((1, 2)), np.array([[0.0, np.inf]]))
