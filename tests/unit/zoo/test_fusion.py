"""Zoo v2 (the fusion experiment): recipes, stages, trainable parts, text-only batches."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from vlmlens.data import SynthConfig
from vlmlens.testing import tiny_hf
from vlmlens.zoo import stages
from vlmlens.zoo.cli import add_parser, main
from vlmlens.zoo.configs import build_config
from vlmlens.zoo.data import DataConfig, build_train_set, collate
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.fusion import FUSION_OF, FUSION_RECIPES, FusionRecipe
from vlmlens.zoo.pretrain import warmup_cosine
from vlmlens.zoo.stages import PARTS, Sampler, Stage, part_modules, report, set_trainable
from vlmlens.zoo.train import prepare

FAMILIES = ["llava", "paligemma", "qwen2_vl"]
SMALL = DataConfig(n_images=4, image_sizes=(32, 48), synth=SynthConfig(object_scale=(0.2, 0.3)), grounding_rate=0.2)


def test_arms_share_everything_but_fusion():
    recipes = [FUSION_RECIPES[f] for f in FAMILIES]
    assert {r.fusion for r in recipes} == {"late", "early", "native"}
    assert all(FUSION_OF[f] == FUSION_RECIPES[f].fusion for f in FAMILIES)
    shared = ("data", "batch_size", "weight_decay", "vision_pretrain_steps", "vision_pretrain_lr",
              "vision_pretrain_batch", "tie_word_embeddings", "size", "steps")  # fmt: skip
    for name in shared:
        assert len({getattr(r, name) for r in recipes}) == 1, name
    texts = [build_config(f, "toy2").get_text_config() for f in FAMILIES]
    for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        assert len({getattr(t, name) for t in texts}) == 1, name
    assert texts[0].num_hidden_layers >= 6 and texts[0].hidden_size >= 192


def test_late_fusion_stages():
    late = FUSION_RECIPES["llava"]
    assert late.freeze_vision
    assert [(s.name, s.train, s.text_only) for s in late.stages] == [
        ("lm-text", ("lm",), True),
        ("align", ("projector",), False),
        ("instruct", ("projector", "lm"), False),
    ]
    assert late.stages[1].caption_rate == 1.0
    early, native = FUSION_RECIPES["paligemma"], FUSION_RECIPES["qwen2_vl"]
    assert not early.freeze_vision and not native.freeze_vision
    assert [(s.name, s.train) for s in early.stages] == [("lm-text", ("lm",)), ("joint", ("tower", "projector", "lm"))]
    assert [(s.name, s.train) for s in native.stages] == [
        ("lm-text", ("lm",)),
        ("align", ("tower", "projector")),
        ("joint", ("tower", "projector", "lm")),
    ]
    # The same text-only start in every arm.
    assert len({r.stages[0] for r in (late, early, native)}) == 1
    assert not any(r.vision_pretrain_merger for r in (late, early, native))


def test_scaled_keeps_proportions():
    full = FUSION_RECIPES["llava"]
    r = full.scaled(100)
    assert [s.steps for s in r.stages] == [s.steps * 100 // full.steps for s in full.stages]
    assert r.vision_pretrain_steps == full.vision_pretrain_steps * 100 // full.steps
    assert r.stages[0].lr == full.stages[0].lr
    with pytest.raises(ZooError, match="steps must be >= 3"):
        FUSION_RECIPES["llava"].scaled(2)


def test_stage_validation():
    with pytest.raises(ZooError, match="text-only stage can train only the language model"):
        Stage(name="x", steps=1, lr=1e-3, train=("projector", "lm"), text_only=True)
    # Unknown part names are also a type error, caught first under runtime type checking.
    with pytest.raises(ZooError, match="train must name some of tower, projector, lm"):
        Stage(name="x", steps=1, lr=1e-3, train=())
    with pytest.raises(ZooError, match="steps must be >= 1"):
        Stage(name="x", steps=0, lr=1e-3, train=("lm",))
    with pytest.raises(ZooError, match=r"caption_rate \+ grounding_rate must be <= 1"):
        Stage(name="x", steps=1, lr=1e-3, train=("lm",), caption_rate=0.9, grounding_rate=0.2)
    for bad in (-0.1, 1.0):
        with pytest.raises(ZooError, match=rf"'x': warmup must be in \[0, 1\); got {bad}"):
            Stage(name="x", steps=1, lr=1e-3, train=("lm",), warmup=bad)


def test_stage_warmup_reaches_the_schedule(monkeypatch):
    # run_stage passes Stage.warmup on to warmup_cosine: the lr rises linearly over the first
    # int(steps * warmup) steps, reaching the peak on the last of them, then decays (cosine);
    # the default 0.05 of 20 steps is a single warm-up step.
    model, processor = tiny_hf("llava")
    ts = build_train_set("llava", processor, SMALL)
    lrs: list[float] = []

    def spy(opt, steps, *args):
        opt.register_step_pre_hook(lambda o, _a, _k: lrs.append(o.param_groups[0]["lr"]))
        return warmup_cosine(opt, steps, *args)

    monkeypatch.setattr(stages, "warmup_cosine", spy)
    peak = 1e-3
    for warmup, n_warm in ((0.15, 3), (0.05, 1)):
        lrs.clear()
        stage = Stage(name="x", steps=20, lr=peak, train=("projector",), warmup=warmup)
        stages.run_stage("llava", model, ts, stage, seed=0, index=0, batch_size=2, weight_decay=0.0, progress=False)
        assert len(lrs) == 20
        assert lrs[:n_warm] == pytest.approx([peak * (i + 1) / n_warm for i in range(n_warm)])
        assert lrs.index(max(lrs)) == n_warm - 1 and lrs[n_warm] == pytest.approx(peak)
        assert all(x > y for x, y in zip(lrs[n_warm:], lrs[n_warm + 1 :]))


@pytest.mark.parametrize("family", ["paligemma", "qwen2_vl"])
def test_tower_lr_scale_sets_the_towers_group(family):
    # The tower learns at lr * tower_lr_scale, every other trained part at lr; at the default
    # 1.0 (or when the tower is not trained) a single group.
    model, _ = tiny_hf(family)
    tower = {id(p) for m in part_modules(family, model)["tower"] for p in m.parameters()}
    joint = Stage(name="joint", steps=1, lr=1e-3, train=("tower", "projector", "lm"), tower_lr_scale=0.2)
    params = set_trainable(family, model, joint.train)
    groups = stages.param_groups(family, model, joint, params)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2e-4])
    assert {id(p) for p in groups[1]["params"]} == tower
    assert not tower & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(params)
    for stage in (dataclasses.replace(joint, tower_lr_scale=1.0), dataclasses.replace(joint, train=("projector", "lm"))):
        params = set_trainable(family, model, stage.train)
        assert [(len(g["params"]), g["lr"]) for g in stages.param_groups(family, model, stage, params)] == [
            (len(params), 1e-3)
        ]
    for bad in (0.0, 1.5):
        with pytest.raises(ZooError, match=rf"'x': tower_lr_scale must be in \(0, 1\]; got {bad}"):
            Stage(name="x", steps=1, lr=1e-3, train=("lm",), tower_lr_scale=bad)


def test_recipe_validation():
    lm = Stage(name="lm", steps=1, lr=1e-3, train=("lm",))
    with pytest.raises(ZooError, match="tower would stay random"):
        FusionRecipe(fusion="late", stages=(lm,), vision_pretrain_steps=0)
    with pytest.raises(ZooError, match="stage names must be distinct"):
        FusionRecipe(fusion="late", stages=(lm, lm))
    with pytest.raises(dataclasses.FrozenInstanceError):
        FUSION_RECIPES["llava"].batch_size = 3  # type: ignore[misc]
    with pytest.raises(ZooError, match="image_size=64 is not a multiple of patch_size=24"):
        dataclasses.replace(FUSION_RECIPES["llava"], patch_size=24)


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_patch_size_sets_the_towers_patches_and_image_tokens(family):
    recipe = dataclasses.replace(
        FUSION_RECIPES[family], size="tiny", patch_size=16, data=DataConfig(n_images=2, image_sizes=(48,))
    )
    assert recipe.dims.patch_size == 16 and dataclasses.replace(recipe, patch_size=None).dims.patch_size == 8
    model, _, ts, _ = prepare(family, recipe, 0, pretrain=False, progress=False)
    assert model.config.vision_config.patch_size == 16
    assert int((ts.prompts[0]["input_ids"] == ts.image_token_id).sum()) == (32 // 16) ** 2
    ids = ts.prompts[0]["input_ids"][None]
    with torch.no_grad():  # HF checks that the tower gives one feature per image token
        logits = model(input_ids=ids, pixel_values=ts.pixels[0]["pixel_values"][None]).logits
    assert logits.shape[:2] == ids.shape


def test_arms_give_the_lm_the_same_image_tokens():
    counts = {}
    for family in FAMILIES:
        recipe = dataclasses.replace(FUSION_RECIPES[family], data=DataConfig(n_images=2, image_sizes=(48, 64)))
        _, _, ts, _ = prepare(family, recipe, 0, pretrain=False, progress=False)
        counts[family] = sorted({int((p["input_ids"] == ts.image_token_id).sum()) for p in ts.prompts})
    # Qwen2-VL keeps each image's size: 48 px -> 9 merged tokens, 64 px -> 16; the others resize to 64 px.
    assert counts == {"llava": [16], "paligemma": [16], "qwen2_vl": [9, 16]}


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_cover_the_model_and_freeze_the_rest(family):
    model, _ = tiny_hf(family)
    parts = part_modules(family, model)
    ids = {part: {id(p) for m in mods for p in m.parameters()} for part, mods in parts.items()}
    assert set(ids) == set(PARTS)
    assert not ids["tower"] & ids["projector"] and not ids["projector"] & ids["lm"]
    params = set_trainable(family, model, ("projector",))
    assert {id(p) for p in params} == ids["projector"]
    assert all(p.requires_grad == (id(p) in ids["projector"]) for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_batches_withhold_the_images(family):
    model, processor = tiny_hf(family)
    ts = build_train_set(family, processor, SMALL)
    idx = ts.by_kind("qa")[:3] + ts.by_kind("caption")[:2]
    full, text = collate(ts, idx), collate(ts, idx, text_only=True)
    image_id = processor.tokenizer.image_token_id
    assert "pixel_values" not in text and "image_grid_thw" not in text
    assert not (text["input_ids"] == image_id).any()
    # The same answers, and the same tokens once the image placeholders are dropped.
    for a, b, la, lb in zip(full["input_ids"], text["input_ids"], full["labels"], text["labels"]):
        keep = a != image_id
        n = int(keep.sum())
        assert torch.equal(a[keep], b[:n]) and torch.equal(la[keep], lb[:n])
    with torch.no_grad():
        out = model(**{k: v for k, v in text.items() if not k.startswith("aux_")})
    assert torch.isfinite(out.loss)


def test_sampler_is_deterministic():
    _, processor = tiny_hf("llava")
    ts = build_train_set("llava", processor, SMALL)
    rates = {"caption": 0.25, "grounding": 0.25}
    a, b, c = (Sampler(ts, 8, rates, s) for s in ([0, 17, 1], [0, 17, 1], [0, 17, 2]))
    batches = [a.next() for _ in range(3)]
    assert batches == [b.next() for _ in range(3)]
    assert batches != [c.next() for _ in range(3)]
    kinds = [ts.examples[i].kind for i in batches[0]]
    assert (kinds.count("caption"), kinds.count("grounding"), kinds.count("qa")) == (2, 2, 4)


def test_sampler_state_continues_the_same_order():
    _, processor = tiny_hf("llava")
    ts = build_train_set("llava", processor, SMALL)
    rates = {"caption": 0.25, "grounding": 0.25}
    a = Sampler(ts, 8, rates, [0, 17, 1])
    # Far enough to reshuffle every pool at least once before the state is taken.
    for _ in range(len(ts.examples)):
        a.next()
    restored = Sampler(ts, 8, rates, [0, 17, 1])
    restored.restore(a.state())
    assert [restored.next() for _ in range(len(ts.examples))] == [a.next() for _ in range(len(ts.examples))]


def test_cli_version_flag():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["zoo", "train", "--family", "paligemma", "--out", "x", "--version", "1"])
    assert (args.version, args.restart) == (1, False)
    assert parser.parse_args(["zoo", "train", "--family", "llava", "--out", "x"]).version == 2


def test_cli_restart_is_for_version_2(tmp_path, capsys):
    assert main(["train", "--family", "llava", "--out", str(tmp_path), "--version", "1", "--restart"]) == 2
    assert "--restart applies to --version 2 runs" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_compact_weights_halve_the_file_and_load_as_float32(tmp_path):
    from vlmlens.zoo.io import compact_weights, load_model

    model, _ = tiny_hf("llava")
    model.save_pretrained(tmp_path)
    before = load_model(tmp_path).state_dict()
    size = (tmp_path / "model.safetensors").stat().st_size
    assert compact_weights(tmp_path) < 0.6 * size
    loaded = load_model(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    after = loaded.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v.half().float()) for k, v in before.items() if v.is_floating_point())
    with pytest.raises(ZooError, match="No model.safetensors"):
        compact_weights(tmp_path / "missing")


def test_report_calls_back_every_n_steps_and_at_the_end():
    model = torch.nn.Linear(2, 2)
    calls, resumed = [], []

    def callback(step, m):
        calls.append((step, m.training, torch.is_grad_enabled()))

    model.train()
    for step in range(1, 8):
        report(callback, step, 7, 3, model, lambda: resumed.append(model.train()))
    assert calls == [(3, False, False), (6, False, False), (7, False, False)]
    assert len(resumed) == 3 and model.training
    report(None, 3, 7, 3, model, lambda: resumed.append(1))
    assert len(resumed) == 3
