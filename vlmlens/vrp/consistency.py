"""Behavioural confidence of the VLM Reliability Probe: self-consistency and token confidence.

The model-running code samples K answers per question (prompt and image encoded once)
and reads the greedy answer's token log-probabilities; these functions score them.
"""

import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from vlmlens.errors import DataError
from vlmlens.vrp.stats import ArrayOrTensor, as_finite

_LOGPROB_TOLERANCE = 1e-6  # float rounding can push log(1) a hair above 0


def _strip_punctuation(text: str) -> str:
    return "".join(
        " " if ch in string.punctuation or unicodedata.category(ch).startswith("P") else ch
        for ch in text
    )


def normalize_answer(text: str, *, yes_no: bool = False) -> str:
    """Normalise a generated answer so that equal answers compare equal.

    Args:
        text: The decoded answer.
        yes_no: Map the raw text to ``"yes"`` / ``"no"`` with POPE's own parser
            (:func:`vlmlens.data.answers.parse_yes_no`, applied before any lowercasing,
            since POPE's rule is case-sensitive). Otherwise lowercase, replace punctuation
            by spaces and collapse whitespace.

    Returns:
        The normalised answer (may be ``""`` for an answer made only of punctuation).

    Raises:
        TypeError: if ``text`` is not a string.

    Examples:
        >>> normalize_answer("  A red Car! ")
        'a red car'
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}: {text!r}.")
    if yes_no:
        from vlmlens.data.answers import parse_yes_no  # lazy: keeps vrp free of data imports

        return parse_yes_no(text)
    return " ".join(_strip_punctuation(text.lower()).split())


def consistency_score(answers: Sequence[str], *, yes_no: bool = False) -> tuple[str, float]:
    """Self-consistency S_SC: the majority answer and its share of the K samples.

    Args:
        answers: K sampled answers to one question (K >= 1).
        yes_no: Normalise with POPE's yes/no parser (see :func:`normalize_answer`).

    Returns:
        ``(majority_answer, share)`` with share = count of the majority answer / K.
        Ties go to the answer that was sampled first.

    Raises:
        DataError: if ``answers`` is empty or a bare string.

    Examples:
        >>> consistency_score(["Red.", "red", "blue", "Red"])
        ('red', 0.75)
    """
    if isinstance(answers, str):
        raise DataError(
            f"answers must be a sequence of K answers, got the single string {answers!r}; "
            "wrap it in a list."
        )
    if len(answers) == 0:
        raise DataError("answers is empty; pass the K sampled answers (K >= 1).")
    counts = Counter(normalize_answer(a, yes_no=yes_no) for a in answers)
    # Counter keeps first-seen order, and most_common is stable, so ties go to the first.
    majority, count = counts.most_common(1)[0]
    return majority, count / len(answers)


def token_confidence(logprobs: Float[ArrayOrTensor, " token"] | Sequence[float]) -> float:
    """Token confidence: mean log-probability of the greedy answer's tokens.

    Args:
        logprobs: Log-probability of each generated answer token (natural log, <= 0).

    Returns:
        The mean, in nats (0 means every token had probability 1).

    Raises:
        DataError: if empty, not 1-D, non-finite, or a value is positive (not a log-prob).

    Examples:
        >>> round(token_confidence([np.log(0.5), np.log(0.25)]), 4)
        -1.0397
    """
    raw = np.asarray(logprobs, dtype=np.float64) if isinstance(logprobs, Sequence) else logprobs
    values = as_finite(raw, name="logprobs", ndim=1)
    if values.size == 0:
        raise DataError("logprobs is empty; the greedy answer has at least one token.")
    if (values > _LOGPROB_TOLERANCE).any():
        raise DataError(
            f"logprobs must be log-probabilities (<= 0), got max {values.max()}; "
            "pass log_softmax values, not logits or probabilities."
        )
    return float(values.mean())
