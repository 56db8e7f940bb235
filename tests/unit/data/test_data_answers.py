"""POPE's answer parser (literal rule) and metrics against hand-computed confusion matrices."""

from __future__ import annotations

import re

import pytest

from vlmlens.data import PopeMetrics, parse_yes_no, pope_metrics
from vlmlens.errors import DataError


def _wrong_type(call, match: str) -> None:
    """A wrong-typed argument raises: our own error (wording pinned) or, when tests run
    with jaxtyping/beartype runtime checking, the checker's TypeError first."""
    with pytest.raises((DataError, TypeError)) as info:
        call()
    if not type(info.value).__module__.startswith(("jaxtyping", "beartype")):
        assert re.search(match, str(info.value)), str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No.", "no"),
        ("Yes, there is no dog", "no"),  # "no" is one of the words
        ("not sure", "no"),
        ("", "yes"),  # no word at all -> yes
        ("NO", "yes"),  # only "No", "no" and "not" count
        ("Not really", "yes"),  # "Not" is not "not"
        ("no", "no"),
        ("Yes.", "yes"),
        ("Yes. No.", "yes"),  # only the text before the first '.' counts
        ("No, there is not.", "no"),
        ("No,", "no"),  # commas are dropped before splitting
        ("nothing", "yes"),  # whole words only
        ("No\n", "yes"),  # split(' ') keeps the newline on the word
        ("There is\tno dog", "yes"),  # tabs do not split: the word is "is\tno"
        ("There\tis no dog", "no"),
        ("yes", "yes"),
    ],
)
def test_parse_yes_no_literal_rule(text: str, expected: str) -> None:
    assert parse_yes_no(text) == expected


def test_parse_yes_no_rejects_non_strings() -> None:
    _wrong_type(lambda: parse_yes_no(None), "expects a string answer, got NoneType")  # type: ignore[arg-type]


def test_metrics_hand_computed() -> None:
    # labels:      y   y   y   y   n   n   n   n   n   n
    # predictions: y   y   y   n   y   n   n   n   n   y
    labels = ["yes"] * 4 + ["no"] * 6
    preds = ["yes", "yes", "yes", "no", "yes", "no", "no", "no", "no", "yes"]
    m = pope_metrics(preds, labels)
    assert (m.tp, m.fp, m.tn, m.fn, m.n) == (3, 2, 4, 1, 10)
    assert m.accuracy == pytest.approx(7 / 10)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m.yes_ratio == pytest.approx(5 / 10)  # predictions, not labels (labels would give 0.4)
    assert str(m) == "n=10 acc=0.7000 prec=0.6000 rec=0.7500 f1=0.6667 yes_ratio=0.5000 (tp=3 fp=2 tn=4 fn=1)"
    assert m.to_dict()["f1"] == pytest.approx(m.f1)


def test_metrics_always_no_zero_division_is_zero() -> None:
    m = pope_metrics(["no"] * 4, ["yes", "no", "yes", "no"])
    assert (m.tp, m.fp, m.tn, m.fn) == (0, 0, 2, 2)
    assert m.accuracy == 0.5 and m.precision == 0.0 and m.recall == 0.0 and m.f1 == 0.0 and m.yes_ratio == 0.0


def test_metrics_all_negative_labels() -> None:
    m = pope_metrics(["yes", "no"], ["no", "no"])
    assert m.recall == 0.0 and m.precision == 0.0 and m.yes_ratio == 0.5


def test_metrics_perfect() -> None:
    m = pope_metrics(("yes", "no"), ("yes", "no"))
    assert m.accuracy == m.precision == m.recall == m.f1 == 1.0


def test_metrics_validation() -> None:
    with pytest.raises(DataError, match="got 2 predictions but 3 labels"):
        pope_metrics(["yes", "no"], ["yes", "no", "no"])
    with pytest.raises(DataError, match="got no predictions"):
        pope_metrics([], [])
    with pytest.raises(DataError, match=r"predictions\[1\] is 'Yes.'.*parse_yes_no"):
        pope_metrics(["yes", "Yes."], ["yes", "no"])
    with pytest.raises(DataError, match=r"labels\[0\] is 'YES'"):
        pope_metrics(["yes"], ["YES"])
    with pytest.raises(DataError, match="non-negative ints"):
        PopeMetrics(tp=-1, fp=0, tn=0, fn=0)
