"""Logit-lens margins of the VLM Reliability Probe, over logits already read per layer.

The model-running code applies the final norm and unembedding to the residual stream at
the last prompt position of every layer; these functions turn those per-layer logits into
margins and find the peak visual layer. Every function accepts extra leading batch axes
(``(batch, layer, vocab)``) as well as a single example (``(layer, vocab)``).
"""

from collections.abc import Iterable

import numpy as np
import torch
from jaxtyping import Float

from vlmlens.errors import DataError
from vlmlens.vrp.stats import ArrayOrTensor, as_finite, check_same_length, to_numpy

TokenIds = Iterable[int] | np.ndarray | torch.Tensor
"""Token ids of an answer's variants (case / leading-space forms), e.g. ``{3869, 4874}``."""


def _logits(x: ArrayOrTensor) -> np.ndarray:
    arr = to_numpy(x)
    if arr.ndim < 2:
        raise DataError(
            f"logits must have shape (..., layer, vocab), got shape {arr.shape}; add a layer "
            "axis for a single layer."
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"logits must be floating point, got dtype {arr.dtype}.")
    if np.isnan(arr).any():
        raise DataError(f"logits contain {int(np.isnan(arr).sum())} NaN values.")
    return arr


def _ids(ids: TokenIds, vocab: int, name: str) -> np.ndarray:
    arr = to_numpy(ids) if isinstance(ids, np.ndarray | torch.Tensor) else np.array(list(ids))
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise DataError(f"{name} is empty; pass at least one token id.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must be integer token ids, got dtype {arr.dtype}: {arr[:5]}.")
    bad = arr[(arr < 0) | (arr >= vocab)]
    if bad.size:
        raise DataError(
            f"{name} has ids {bad[:5].tolist()} outside the vocabulary [0, {vocab}); "
            "use ids from the same tokenizer as the unembedding."
        )
    return np.unique(arr)


def _max_over(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return logits[..., ids].max(axis=-1).astype(np.float64)


def truth_margin(
    logits_by_layer: Float[ArrayOrTensor, "*batch layer vocab"], correct_ids: TokenIds
) -> np.ndarray:
    """Truth margin per layer: best logit of the correct answer minus best other logit.

    The correct answer's logit is the max over its token variants; the other logit is the
    max over every token not in ``correct_ids``.

    Args:
        logits_by_layer: Logit-lens logits, shape ``(layer, vocab)`` or
            ``(batch, layer, vocab)``.
        correct_ids: Token ids of the correct answer's variants (shared by the batch).

    Returns:
        Margins, shape ``(layer,)`` or ``(batch, layer)``; > 0 where the correct answer
        is the top token.

    Raises:
        DataError: on NaN logits, empty / out-of-range ids, or ids covering the vocab.

    Examples:
        >>> logits = np.array([[0.0, 1.0, 3.0], [0.0, 4.0, 3.0]])
        >>> truth_margin(logits, {1}).tolist()
        [-2.0, 1.0]
    """
    x = _logits(logits_by_layer)
    vocab = x.shape[-1]
    ids = _ids(correct_ids, vocab, "correct_ids")
    others = np.setdiff1d(np.arange(vocab), ids, assume_unique=True)
    if others.size == 0:
        raise DataError("correct_ids cover the whole vocabulary; no other token to compare.")
    return _max_over(x, ids) - _max_over(x, others)


def yes_no_margin(
    logits_by_layer: Float[ArrayOrTensor, "*batch layer vocab"],
    yes_ids: TokenIds,
    no_ids: TokenIds,
) -> np.ndarray:
    """Yes/no margin per layer: max logit over "yes" variants minus max over "no" variants.

    Args:
        logits_by_layer: Logit-lens logits, shape ``(layer, vocab)`` or
            ``(batch, layer, vocab)``.
        yes_ids: Token ids of the "yes" variants ("yes", "Yes", " yes", ...).
        no_ids: Token ids of the "no" variants; must not overlap ``yes_ids``.

    Returns:
        Margins, shape ``(layer,)`` or ``(batch, layer)``.

    Raises:
        DataError: on NaN logits, empty / out-of-range / overlapping ids.

    Examples:
        >>> logits = np.array([[2.0, 0.0, 1.0, 5.0]])
        >>> yes_no_margin(logits, [0, 1], [2]).tolist()
        [1.0]
    """
    x = _logits(logits_by_layer)
    vocab = x.shape[-1]
    yes, no = _ids(yes_ids, vocab, "yes_ids"), _ids(no_ids, vocab, "no_ids")
    shared = np.intersect1d(yes, no)
    if shared.size:
        raise DataError(f"yes_ids and no_ids share ids {shared.tolist()}; they must be disjoint.")
    return _max_over(x, yes) - _max_over(x, no)


def margin_gain(
    margin_real: Float[ArrayOrTensor, "batch layer"],
    margin_blank: Float[ArrayOrTensor, "batch layer"],
) -> np.ndarray:
    """Mean per-layer margin gain of the real image over a blank grey image (paired).

    Args:
        margin_real: Margins with the real image, shape ``(batch, layer)``.
        margin_blank: Margins of the same n questions with a blank image.

    Returns:
        ``mean(margin_real - margin_blank, axis=0)``, shape ``(layer,)``.

    Raises:
        DataError: if the shapes differ, n = 0, or values are non-finite.

    Examples:
        >>> margin_gain(np.array([[1.0, 3.0]]), np.array([[1.0, 1.0]])).tolist()
        [0.0, 2.0]
    """
    real = as_finite(margin_real, name="margin_real", ndim=2)
    blank = as_finite(margin_blank, name="margin_blank", ndim=2)
    n = check_same_length(margin_real=real, margin_blank=blank)
    if real.shape != blank.shape:
        raise DataError(
            f"margin_real {real.shape} and margin_blank {blank.shape} must have the same "
            "(batch, layer) shape: the same questions, read at the same layers."
        )
    if n == 0:
        raise DataError("margin_real is empty; pass at least one question.")
    return (real - blank).mean(axis=0)


def peak_visual_layer(
    margin_real: Float[ArrayOrTensor, "batch layer"],
    margin_blank: Float[ArrayOrTensor, "batch layer"],
) -> int:
    """Peak visual layer: argmax over layers of the mean margin gain (first on ties).

    Args:
        margin_real: Margins with the real image, shape ``(batch, layer)``.
        margin_blank: Margins of the same questions with a blank grey image.

    Returns:
        The 0-based layer index.

    Raises:
        DataError: as :func:`margin_gain`.

    Examples:
        >>> peak_visual_layer(np.array([[0.0, 2.0, 1.0]]), np.zeros((1, 3)))
        1
    """
    return int(np.argmax(margin_gain(margin_real, margin_blank)))
