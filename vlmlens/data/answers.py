"""POPE's answer parser and metrics, kept exactly as the benchmark defines them.

Examples:
    >>> preds = [parse_yes_no(t) for t in ["Yes.", "No, there is not.", "yes"]]
    >>> preds
    ['yes', 'no', 'yes']
    >>> print(pope_metrics(preds, ["yes", "no", "no"]))
    n=3 acc=0.6667 prec=0.5000 rec=1.0000 f1=0.6667 yes_ratio=0.6667 (tp=1 fp=1 tn=1 fn=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vlmlens.errors import DataError

_NO_WORDS = frozenset({"No", "not", "no"})


def parse_yes_no(text: str) -> Literal["yes", "no"]:
    """Map a free-form answer to ``"yes"``/``"no"`` with POPE's own rule, literally.

    Keep the text before the first ``'.'``, drop commas, split on single spaces
    (``str.split(' ')``, not any whitespace); the answer is ``"no"`` if one of the words
    is exactly ``"No"``, ``"not"`` or ``"no"``, otherwise ``"yes"``. This keeps POPE's
    quirks on purpose, so numbers stay comparable with published ones: ``"NO"``,
    ``"Not really"`` and ``""`` all parse as ``"yes"``, and so does ``"No\\n"`` (the
    newline stays attached to the word).

    Args:
        text: A model's answer.

    Returns:
        ``"yes"`` or ``"no"``.

    Raises:
        TypeError: If ``text`` is not a string.

    Examples:
        >>> [parse_yes_no(t) for t in ["No.", "Yes, there is no dog", "NO", ""]]
        ['no', 'no', 'yes', 'yes']
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_yes_no expects a string answer, got {type(text).__name__}: {text!r}")
    first = text.split(".")[0]
    words = first.replace(",", "").split(" ")
    return "no" if _NO_WORDS.intersection(words) else "yes"


def _div(num: int | float, den: int | float) -> float:
    return float(num) / float(den) if den else 0.0


@dataclass(frozen=True, kw_only=True)
class PopeMetrics:
    """POPE metrics from a confusion matrix, positive class = ``"yes"``.

    Ratios whose denominator is zero (precision with no "yes" prediction, recall with no
    "yes" label, F1 when precision + recall is 0) are reported as ``0.0``.

    Attributes:
        tp: Label yes, predicted yes.
        fp: Label no, predicted yes.
        tn: Label no, predicted no.
        fn: Label yes, predicted no.
    """

    tp: int
    fp: int
    tn: int
    fn: int

    def __post_init__(self) -> None:
        counts = {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}
        bad = {k: v for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise DataError(f"PopeMetrics counts must be non-negative ints, got {bad}")

    @property
    def n(self) -> int:
        """Number of questions."""
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        """(tp + tn) / n."""
        return _div(self.tp + self.tn, self.n)

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0.0 when nothing was predicted yes."""
        return _div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 0.0 when no label is yes."""
        return _div(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 0.0 when both are 0."""
        p, r = self.precision, self.recall
        return _div(2 * p * r, p + r)

    @property
    def yes_ratio(self) -> float:
        """Share of *predictions* that are yes: (tp + fp) / n."""
        return _div(self.tp + self.fp, self.n)

    def to_dict(self) -> dict[str, Any]:
        """All counts and ratios as a plain dict."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "yes_ratio": self.yes_ratio,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
        }

    def __str__(self) -> str:
        return (
            f"n={self.n} acc={self.accuracy:.4f} prec={self.precision:.4f} rec={self.recall:.4f} "
            f"f1={self.f1:.4f} yes_ratio={self.yes_ratio:.4f} "
            f"(tp={self.tp} fp={self.fp} tn={self.tn} fn={self.fn})"
        )


def _check_answers(values: Sequence[str], what: str) -> None:
    for i, v in enumerate(values):
        if v not in ("yes", "no"):
            raise DataError(
                f"{what}[{i}] is {v!r}; expected 'yes' or 'no' "
                "(run raw model answers through parse_yes_no first)"
            )


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> PopeMetrics:
    """Confusion matrix and POPE metrics of parsed predictions against labels.

    Args:
        predictions: ``"yes"``/``"no"`` per question (see :func:`parse_yes_no`).
        labels: Ground truth ``"yes"``/``"no"``, same order and length.

    Returns:
        A :class:`PopeMetrics`.

    Raises:
        DataError: If the lengths differ, the inputs are empty, or a value is not
            ``"yes"``/``"no"``.

    Examples:
        >>> m = pope_metrics(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
        >>> (m.tp, m.fp, m.tn, m.fn), m.accuracy, m.yes_ratio
        ((1, 1, 1, 1), 0.5, 0.5)
    """
    predictions, labels = list(predictions), list(labels)
    if len(predictions) != len(labels):
        raise DataError(
            f"pope_metrics got {len(predictions)} predictions but {len(labels)} labels; pass one prediction per label"
        )
    if not labels:
        raise DataError("pope_metrics got no predictions; metrics of an empty set are undefined")
    _check_answers(predictions, "predictions")
    _check_answers(labels, "labels")
    tp = fp = tn = fn = 0
    for p, y in zip(predictions, labels):
        if p == "yes":
            tp, fp = (tp + 1, fp) if y == "yes" else (tp, fp + 1)
        else:
            fn, tn = (fn + 1, tn) if y == "yes" else (fn, tn + 1)
    return PopeMetrics(tp=tp, fp=fp, tn=tn, fn=fn)
