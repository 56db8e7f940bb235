"""Answer normalisation, self-consistency and token confidence."""

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from vlmlens.data.answers import parse_yes_no
from vlmlens.errors import DataError
from vlmlens.vrp.consistency import consistency_score, normalize_answer, token_confidence

SHAPE_ERRORS = (DataError, TypeCheckError)  # TypeCheckError when runtime checking is on


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  A red Car! ", "a red car"),
        ("Two.", "two"),
        ("¿Rojo?", "rojo"),
        ("black-and-white", "black and white"),
        ("...", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_yes_no_normalisation_is_popes_parser_on_the_raw_text() -> None:
    texts = ["Yes.", "No, there is not.", "There is no dog", "NO", "Not really", ""]
    assert [normalize_answer(t, yes_no=True) for t in texts] == [parse_yes_no(t) for t in texts]
    # POPE's rule is case-sensitive: "NO" parses as "yes" (kept on purpose).
    assert normalize_answer("NO", yes_no=True) == "yes"


def test_normalize_answer_rejects_non_strings() -> None:
    # The runtime checker, when on, rejects the call first (its error is a TypeError too).
    with pytest.raises(TypeError, match=r"answer must be a str, got int: 3|parameter 'text'"):
        normalize_answer(3)  # type: ignore[arg-type]


def test_consistency_score() -> None:
    assert consistency_score(["Red.", "red", "blue", "Red"]) == ("red", 0.75)
    assert consistency_score(["cat"]) == ("cat", 1.0)
    answers = ["Yes.", "No", "yes", "Yes, it is", "no"] * 2
    assert consistency_score(answers, yes_no=True) == ("yes", 0.6)


def test_consistency_ties_go_to_the_first_sampled_answer() -> None:
    assert consistency_score(["blue", "red", "red", "blue"]) == ("blue", 0.5)
    assert consistency_score(["red", "blue", "blue", "red"]) == ("red", 0.5)


def test_consistency_errors() -> None:
    with pytest.raises(DataError, match="answers is empty"):
        consistency_score([])
    with pytest.raises(DataError, match="got the single string 'yes'; wrap it in a list"):
        consistency_score("yes")


def test_token_confidence() -> None:
    assert token_confidence([np.log(0.5), np.log(0.25)]) == pytest.approx(np.log(0.5 * 0.25) / 2)
    assert token_confidence(torch.tensor([0.0, -1.0], dtype=torch.bfloat16)) == pytest.approx(-0.5)
    assert token_confidence(np.array([0.0])) == 0.0


def test_token_confidence_errors() -> None:
    with pytest.raises(DataError, match="logprobs is empty"):
        token_confidence(np.array([]))
    with pytest.raises(DataError, match=r"must be log-probabilities \(<= 0\), got max 2.0"):
        token_confidence(np.array([-1.0, 2.0]))
    with pytest.raises(DataError, match="logprobs has 1 non-finite values"):
        token_confidence(np.array([-1.0, -np.inf]))
    with pytest.raises(SHAPE_ERRORS):
        token_confidence(np.zeros((2, 2)))
