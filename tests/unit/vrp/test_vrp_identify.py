"""The object-identification readout's parsing and batching (the model-running part is in the e2e test)."""

from __future__ import annotations

import pytest

from vlmlens.data import synth_pope
from vlmlens.errors import DataError
from vlmlens.vrp.identify import image_batches, named


@pytest.mark.parametrize(("text", "name", "want"), [
    ("cup car cone umbrella", "cone", True),            # the toys' object lists
    ("There are two dogs and a cat.", "dog", True),      # plural
    ("A bus, some buses", "bus", True),
    ("I see a Dining  Table near the window", "dining table", True),  # case, multi-word, spacing
    ("a hotdog on a plate", "dog", False),               # inside another word
    ("the table is empty", "dining table", False),       # only part of a multi-word name
    ("doge", "dog", False),
    ("", "cat", False),
])
def test_named_matches_whole_words_singular_or_plural(text, name, want) -> None:
    assert named(text, name) is want


def test_named_refuses_an_empty_object() -> None:
    with pytest.raises(DataError, match="empty object name"):
        named("a cat", " ")


def test_image_batches_keep_every_question_of_an_image_together_in_order() -> None:
    items = synth_pope("adversarial", 5, seed=0).items
    batches = image_batches(items, 2)
    assert [i for i, _ in batches] == [0, 1, 2]
    assert [len({item.image for item in chunk}) for _, chunk in batches] == [2, 2, 1]
    assert [item for _, chunk in batches for item in chunk] == list(items)
