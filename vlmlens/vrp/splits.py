"""Train / held-out splits and cross-validation folds, grouped by image when groups are given.

POPE asks six questions about each image, and a model's errors cluster by image: a split
that puts one image's questions on both sides lets a probe score on what it memorised about
the image. With ``groups`` (one id per question, e.g. the image file) every image falls
wholly on one side; classes stay balanced as far as whole groups allow
(``sklearn.model_selection.StratifiedGroupKFold``). Without groups, questions are split
individually (stratified).

The rule for the held-out split with groups: the first of ``round(1 / test_size)`` grouped
stratified folds (a third of the images for the default 0.3); without groups, exactly
``test_size`` of the questions.
"""

import logging
from collections.abc import Iterator

import numpy as np
from jaxtyping import Shaped
from sklearn.model_selection import (
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from vlmlens.errors import DataError

__all__ = ["cv_folds", "holdout"]

logger = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]
"""Row indices of the training part and of the held-out part."""


def _group_folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[Split]:
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise DataError(
            f"{n_folds} grouped folds need at least {n_folds} groups (images), got {n_groups}; "
            "collect more images, or use fewer folds (ProbeConfig.cv_folds / a larger test_size)."
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def holdout(
    labels: Shaped[np.ndarray, " n"], groups: Shaped[np.ndarray, " n"] | None, *, test_size: float, seed: int
) -> Split:
    """One stratified split into a training part and a held-out part (see the module rule).

    Raises:
        DataError: if there are fewer groups than the split's folds.

    Examples:
        >>> y = np.array([0, 1] * 12); g = np.repeat(np.arange(8), 3)
        >>> train, test = holdout(y, g, test_size=0.3, seed=0)
        >>> set(g[train]) & set(g[test])
        set()
    """
    y = np.asarray(labels)
    if groups is None:
        train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
        return train, test
    n_folds = max(2, int(1 / test_size + 0.5))  # round half up (0.4 -> 3 folds, not banker's 2)
    if abs(1 / n_folds - test_size) > 0.05:
        logger.warning("grouped split: a held-out share of %.2f (1 of %d folds) for test_size=%.2f", 1 / n_folds,
                       n_folds, test_size)
    train, test = _group_folds(y, np.asarray(groups), n_folds, seed)[0]
    return train, test


def cv_folds(
    labels: Shaped[np.ndarray, " n"],
    groups: Shaped[np.ndarray, " n"] | None,
    *,
    n_folds: int,
    repeats: int,
    seed: int,
) -> Iterator[Split]:
    """``repeats`` rounds of ``n_folds`` stratified folds (grouped when ``groups`` is given).

    Repeat ``r`` shuffles with seed ``seed + r``; the indices are into ``labels``. With
    fewer groups than ``n_folds`` (a small run), each group becomes its own fold (a warning
    is logged; the caller records how many folds there were).

    Raises:
        DataError: if a class has fewer than ``n_folds`` members, or there are fewer than
            two groups.
    """
    y = np.asarray(labels)
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise DataError(f"cross-validation needs at least 2 groups (images) in the training part, got {n_groups}; "
                            "collect more images.")
        if n_groups < n_folds:
            logger.warning("only %d images in the training part: %d-fold CV instead of %d", n_groups, n_groups,
                           n_folds)
            n_folds = n_groups
    smallest = int(min(y.sum(), (~y.astype(bool)).sum()))
    if smallest < n_folds:
        raise DataError(
            f"{n_folds}-fold cross-validation needs >= {n_folds} examples of each outcome in the training "
            f"part, got {smallest} of the rarer one; collect more questions or lower ProbeConfig.cv_folds."
        )
    for r in range(repeats):
        if groups is None:
            yield from StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed + r).split(y, y)
        else:
            yield from _group_folds(y, np.asarray(groups), n_folds, seed + r)
