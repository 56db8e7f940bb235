"""Tower pre-training: the layout targets follow the processor's resize."""

from __future__ import annotations

import torch

from vlmlens.data import SynthConfig
from vlmlens.testing import tiny_hf
from vlmlens.zoo.data import DataConfig, build_train_set, cell_labels
from vlmlens.zoo.pretrain import pretrain_vision_tower, tower_features
from vlmlens.zoo.processors import build_processor

SMALL = DataConfig(n_images=2, image_sizes=(32, 48), synth=SynthConfig(object_scale=(0.2, 0.3)))


def test_qwen_layout_targets_follow_upscaled_images():
    # Qwen2-VL scales 32 and 48 px scenes up to its smallest side (64 px here): the object
    # maps must follow, or there is one layout target per 16 px of the original scene
    # and one image token per 16 px of the upscaled one.
    model, tiny = tiny_hf("qwen2_vl")
    processor = build_processor("qwen2_vl", image_size=64, patch_size=8, tokenizer=tiny.tokenizer)
    ts = build_train_set("qwen2_vl", processor, SMALL)
    assert [len(f) for f in tower_features("qwen2_vl", model, ts.pixels)] == [16] * 4
    result = pretrain_vision_tower("qwen2_vl", model, ts, steps=2, batch_size=4, lr=1e-3, seed=0, freeze=False, progress=False)
    assert result.steps == 2 and result.final_loss > 0


def test_qwen_merger_pretraining_is_optional():
    # Zoo v2 pre-trains every tower up to its own output: Qwen2-VL's merger (its
    # projector) stays as initialised, like the other families' projectors.
    _, processor = tiny_hf("qwen2_vl")
    ts = build_train_set("qwen2_vl", processor, SMALL)
    for merger in (False, True):
        model, _ = tiny_hf("qwen2_vl")
        before = {k: v.clone() for k, v in model.model.visual.merger.state_dict().items()}
        patch = model.model.visual.patch_embed.proj.weight.clone()
        pretrain_vision_tower(
            "qwen2_vl", model, ts, steps=2, batch_size=4, lr=1e-3, seed=0, freeze=False, merger=merger, progress=False
        )
        after = model.model.visual.merger.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before) != merger
        assert not torch.equal(patch, model.model.visual.patch_embed.proj.weight)
    feats = tower_features("qwen2_vl", model, ts.pixels, merged=False)
    assert [len(f) for f in feats] == [int(p["image_grid_thw"].prod()) for p in ts.pixels]


def test_qwen_patch_order_is_merge_window_order():
    # The unmerged layout targets follow the processor's patch order: the four patches of
    # a merge window are contiguous, so merging them gives the merged grid's cells.
    from vlmlens.zoo.pretrain import _layout

    model, processor = tiny_hf("qwen2_vl")
    ts = build_train_set("qwen2_vl", processor, DataConfig(n_images=1, image_sizes=(64,)))
    segment, pixels = ts.segments[0], ts.pixels[0]
    patches = _layout("qwen2_vl", model, segment, pixels, 8, merged=False).reshape(-1, 4)
    rows = torch.from_numpy(cell_labels(segment, 8)).reshape(8, 8)
    windows = rows.reshape(4, 2, 4, 2).permute(0, 2, 1, 3).reshape(-1, 4)
    assert torch.equal(patches, windows)
