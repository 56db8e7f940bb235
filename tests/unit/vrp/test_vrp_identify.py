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
    ("a hot dog on a plate", "dog", False),              # a longer object of the vocabulary
    ("a hot-dog", "dog", False),
    ("a dog and a hot dog", "dog", True),
    ("a hot dog", "hot dog", True),
    ("a teddy bear", "bear", False),
    ("the red car", "car", True),
    ("a dining-table", "dining table", True),            # hyphen
    ("the table is empty", "dining table", True),        # an alias (ALIASES, a choice)
    ("two people skiing", "person", True),               # irregular plural / everyday words
    ("a woman", "person", True),
    ("knives and forks", "knife", True),
    ("a television", "tv", True),
    ("doge", "dog", False),
    ("", "cat", False),
])
def test_named_matches_whole_words_singular_or_plural(text, name, want) -> None:
    vocabulary = ["dog", "hot dog", "bear", "teddy bear", "car", "dining table", "person", "knife", "tv", "cat", "cone"]
    assert named(text, name, vocabulary) is want


def test_named_refuses_an_empty_object() -> None:
    with pytest.raises(DataError, match="empty object name"):
        named("a cat", " ")


def test_image_batches_keep_every_question_of_an_image_together_in_order() -> None:
    items = synth_pope("adversarial", 5, seed=0).items
    batches = image_batches(items, 2)
    assert [i for i, _ in batches] == [0, 1, 2]
    assert [len({item.image for item in chunk}) for _, chunk in batches] == [2, 2, 1]
    assert [item for _, chunk in batches for item in chunk] == list(items)
    # An image whose questions are not contiguous is still asked once, with all of them.
    shuffled = [items[0], items[6], items[1], *items[2:6], *items[7:]]
    first = image_batches(shuffled, 1)[0][1]
    assert {item.image for item in first} == {items[0].image} and len(first) == 6
