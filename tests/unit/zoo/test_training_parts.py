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


def test_report_refuses_a_v1_checkpoint():
    from vlmlens.zoo.report import measure_card

    with pytest.raises(ZooError, match=r"'?toy-llava-v1'? is not a zoo v2 checkpoint .*zoo_version None.*vlmlens zoo eval"):
        measure_card("toy-llava-v1")


def test_card_names_the_rebuild_command_only_for_the_code_recipe():
    import json

    from vlmlens.data import PopeMetrics
    from vlmlens.zoo.card import LayerProfile
    from vlmlens.zoo.fusion import FUSION_RECIPES, recipe_dict
    from vlmlens.zoo.report import ZooCard

    profile = LayerProfile(model="m", split="adversarial", n_questions=12, seed=0, accuracy=0.5,
                           answer_margin=(0.1,), answer_margin_blank=(0.0,), peak_visual_layer=0,
                           mlp_zero_accuracy=(0.5,), mlp_zero_flips=(0.0,), mlp_zero_flips_ci=((0.0, 0.0),))
    recipe = json.loads(json.dumps(recipe_dict(FUSION_RECIPES["qwen2_vl"])))
    meta = {"family": "qwen2_vl", "fusion": "native", "seed": 2, "threads": 1, "n_params": 10, "train_seconds": 60.0,
            "versions": {}, "recipe": recipe, "vision_pretrain": None,
            "stages": [{"seconds": 1.0, "final_loss": 0.5} for _ in recipe["stages"]]}
    metrics = {s: PopeMetrics(tp=3, fp=2 if s == "adversarial" else 1, tn=1, fn=0)
               for s in ("adversarial", "popular", "random")}
    card = ZooCard(name="toy-qwen2vl-v2-seed2", meta=meta, test_seed=0, metrics=metrics, n_images=1, profile=profile)
    assert card.code_recipe
    text = card.to_markdown()
    assert "vlmlens zoo train --version 2 --family qwen2_vl --seed 2 --out DIR --threads 1" in text
    assert "against popular ones: 2\nvs 1 (2.0x)." in text
    assert "| `joint` | 2,000 | 0.001 | tower, projector, lm | yes |" in text
    other = ZooCard(name="x", meta={**meta, "recipe": {**recipe, "batch_size": 48}}, test_seed=0, metrics=metrics,
                    n_images=1, profile=profile)
    assert not other.code_recipe
    assert "vlmlens zoo train --version 2" not in other.to_markdown()
