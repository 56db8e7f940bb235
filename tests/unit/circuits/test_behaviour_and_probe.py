"""Behaviours split by image; the L1 path chooses exactly k units and says when it cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmlens.circuits import AnswerIds, Behaviour, l1_path
from vlmlens.data import synth_pope
from vlmlens.errors import InputError
from vlmlens.ops import logit_diff


def test_split_keeps_each_image_on_one_side():
    b = Behaviour.from_dataset(synth_pope("adversarial", n_images=10, seed=0))
    first, second = b.split(0.3, seed=4)
    assert set(first.groups).isdisjoint(second.groups)
    assert len(set(first.groups)) == 3 and len(first) + len(second) == len(b)
    assert sorted(first.questions + second.questions) == sorted(b.questions)
    assert b.split(0.3, seed=4)[0].groups == first.groups  # seeded
    with pytest.raises(InputError, match="fraction must be in"):
        b.split(1.0)
    with pytest.raises(InputError, match="at least two images"):
        b.subset(range(6), "one image").split()
    with pytest.raises(InputError, match="labels must be 'yes' or 'no'"):
        Behaviour(images=(None,), questions=("q",), labels=("maybe",), groups=("a",))


def test_margin_is_the_per_question_logit_difference(model, batch):
    answers = AnswerIds.of(model)
    logits = model.forward(batch)
    per_question = answers.margin(logits, batch)
    metric = logit_diff(list(answers.yes), list(answers.no))
    assert per_question.shape == (2,)
    torch.testing.assert_close(per_question.mean(), metric(logits, batch))


def test_l1_path_recovers_the_informative_units():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 40))
    y = (1.5 * x[:, 3] - x[:, 21] + 0.5 * x[:, 8] > 0).astype(int)
    path = l1_path(x, y, k=3)
    assert set(path.order[:3].tolist()) == {3, 21, 8} and path.n_selected >= 3
    assert path.order[0] == 3  # the strongest enters first
    assert sorted(path.order.tolist()) == list(range(40))


def test_l1_path_groups_columns_into_units():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 12))  # 4 units of 3 columns each
    y = (x[:, 7] > 0).astype(int)  # column 7 belongs to unit 2
    path = l1_path(x, y, k=1, groups=np.arange(12) // 3)
    assert path.order[0] == 2 and len(path.order) == 4


def test_l1_path_refuses_rather_than_returning_zero_units():
    x = np.random.default_rng(0).normal(size=(20, 5))
    with pytest.raises(InputError, match="single class"):
        l1_path(x, np.zeros(20, dtype=int), k=1)
    with pytest.raises(InputError, match=r"k must be in 1\.\.5"):
        l1_path(x, (x[:, 0] > 0).astype(int), k=6)
    y = (x[:, 0] > 0).astype(int)  # separable by one column: the path stops short of 5 units
    with pytest.raises(InputError, match="kept only"):
        l1_path(x, y, k=5, max_decades=0.5)
