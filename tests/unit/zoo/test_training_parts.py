"""Pieces of the zoo's training: data, collation, recipes, CLI parsing."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from vlmlens.data import SynthConfig
from vlmlens.zoo.cli import add_parser
from vlmlens.zoo.data import DataConfig, build_train_set, cell_labels, collate
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.processors import build_processor
from vlmlens.zoo.train import RECIPES, Recipe

SMALL = DataConfig(n_images=4, synth=SynthConfig(), grounding_rate=0.2)


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_labels_cover_only_answers(family):
    processor = build_processor(family, image_size=64 if family != "qwen2_vl" else 32, patch_size=8)
    ts = build_train_set(family, processor, SMALL)
    kinds = {e.kind for e in ts.examples}
    assert kinds == {"qa", "caption", "grounding"}
    qa = ts.by_kind("qa")
    batch = collate(ts, qa[:6])
    tok = processor.tokenizer
    for row, labels in zip(batch["input_ids"], batch["labels"]):
        answer = [t for t in labels.tolist() if t != -100]
        assert tok.convert_ids_to_tokens(answer) in (["Yes", tok.eos_token], ["No", tok.eos_token])
    if family == "paligemma":
        # prefix (image + question) bidirectional, answer causal
        assert ((batch["labels"] != -100) <= (batch["token_type_ids"] == 1)).all()
    labels = [tok.decode(list(ts.examples[i].turns[0][1][:1])) for i in qa]
    assert labels.count("Yes") == labels.count("No")


def test_training_seed_must_avoid_test_seed():
    with pytest.raises(ZooError, match="seed 0 is the zoo's test set"):
        DataConfig(seed=0)


def test_recipe_validation():
    with pytest.raises(ZooError, match="freeze_vision needs vision_pretrain_steps"):
        Recipe(steps=10, freeze_vision=True)
    with pytest.raises(ZooError, match="steps must be >= 1"):
        Recipe(steps=0)


def test_recipes_train_qwen_on_two_sizes():
    assert len(RECIPES["qwen2_vl"].data.image_sizes) >= 2
    assert RECIPES["llava"].freeze_vision and not RECIPES["paligemma"].freeze_vision


def test_cell_labels():
    seg = np.zeros((16, 16), dtype=np.uint8)
    seg[0:8, 0:8] = 3
    seg[8:10, 8:10] = 5  # 4 of 64 pixels: below the 20% cover threshold
    assert cell_labels(seg, 8).tolist() == [3, 0, 0, 0]


def test_cli_parses():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["zoo", "train", "--family", "llava", "--out", "x", "--seed", "3"])
    assert (args.zoo_command, args.family, args.out, args.seed, args.steps) == ("train", "llava", "x", 3, None)
    args = parser.parse_args(["zoo", "eval", "toy-llava", "--split", "random"])
    assert (args.model, args.split, args.n_images, args.seed) == ("toy-llava", "random", 500, 0)


def test_cli_list_and_unknown_model(capsys):
    from vlmlens.zoo.cli import run

    assert run(argparse.Namespace(zoo_command="list")) == 0
    assert "toy-llava" in capsys.readouterr().out
    code = run(argparse.Namespace(zoo_command="eval", model="toy-nope", split="random", n_images=1, seed=0, json=False))
    assert code == 2
    assert "neither a zoo model" in capsys.readouterr().out


def test_recipe_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES["llava"].steps = 3  # type: ignore[misc]
