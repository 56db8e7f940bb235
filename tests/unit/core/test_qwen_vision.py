"""Qwen2-VL's vision tower: one shape convention (``1 patch ...`` packed, per-image attention
internals), head indexing that is right, per-image access that cannot silently drop images."""

from __future__ import annotations

import pytest
import torch

from vlmlens.errors import InputError, InterventionError
from vlmlens.ops import Ablate, Patch, run_with_cache, run_with_interventions
from vlmlens.testing import tiny_images, tiny_vlm


@pytest.fixture(scope="module")
def qwen():
    return tiny_vlm("qwen2_vl")


@pytest.fixture(scope="module")
def qbatch(qwen):
    return qwen.prepare(tiny_images(2, seed=6), ["Is there a cat in the image?", "Is there a dog?"])


def vision_heads(model):
    return model.vision_config.num_heads


def test_packed_shapes(qwen, qbatch):
    sites = ["vision.blocks.0.hook_resid_post", "vision.blocks.0.attn.hook_z", "vision.blocks.0.attn.hook_result",
             "vision.blocks.0.attn.hook_q", "vision.blocks.0.attn.hook_pattern", "projector.hook_in",
             "projector.hook_out"]
    _, c = run_with_cache(qwen, qbatch, sites=sites)
    n_patches = int(qbatch.inputs["image_grid_thw"].prod(-1).sum())
    h = vision_heads(qwen)
    assert c["vision.blocks.0.hook_resid_post"].shape[:2] == (1, n_patches)
    assert c["vision.blocks.0.attn.hook_z"].shape[:3] == (1, n_patches, h)
    assert c["vision.blocks.0.attn.hook_result"].shape[:3] == (1, n_patches, h)
    per_image = n_patches // 2
    assert c["vision.blocks.0.attn.hook_q"].shape[:3] == (2, per_image, h)
    assert c["vision.blocks.0.attn.hook_pattern"].shape == (2, h, per_image, per_image)
    assert c["projector.hook_out"].shape[:2] == (1, n_patches // 4)


def test_ablate_vision_z_head_is_that_head(qwen, qbatch):
    h = vision_heads(qwen)
    got = run_with_interventions(qwen, qbatch, [Ablate(site="vision.blocks.0.attn.hook_z", heads=(1,))])
    proj = qwen.module("model.visual.blocks.0.attn.proj")
    d = proj.in_features // h

    def zero(module, args):
        z = args[0].clone()
        z[:, d : 2 * d] = 0
        return (z,)

    handle = proj.register_forward_pre_hook(zero)
    try:
        want = qwen.forward(qbatch)
    finally:
        handle.remove()
    assert (got - want).abs().max() <= 1e-6
    assert (got - qwen.forward(qbatch)).abs().max() > 1e-5


def test_out_of_range_vision_head_is_refused(qwen, qbatch):
    h = vision_heads(qwen)
    with pytest.raises(InterventionError, match=f"head {h} is out of range .* with {h} heads"):
        run_with_interventions(qwen, qbatch, [Ablate(site="vision.blocks.0.attn.hook_z", heads=(h,))])


def test_envoy_of_per_image_site_cannot_drop_images(qwen, qbatch):
    site = "vision.blocks.0.attn.hook_pattern"
    assert qwen.runs_per_image(site) and not qwen.runs_per_image("vision.blocks.0.attn.hook_z")
    with pytest.raises(InputError, match="runs once per image"):
        qwen.envoy(site)
    _, cache = run_with_cache(qwen, qbatch, sites=[site])
    with qwen.trace(qbatch) as tracer:
        patterns = list().save()
        for _ in tracer.iter[:]:
            patterns.append(qwen.envoy(site, per_image=True).output)
    assert len(patterns) == 2
    assert torch.equal(torch.cat(patterns), cache[site])


def _qkv_part_hook(qwen, part, source):
    """Replace the q (0) or v (2) third of block 0's fused qkv output with ``source`` (pre-rope equal)."""
    qkv = qwen.module("model.visual.blocks.0.attn.qkv")
    width = qkv.out_features // 3

    def hook(module, args, out):
        out = out.clone()
        out[:, part * width : (part + 1) * width] = source
        return out

    return qkv.register_forward_hook(hook)


def test_patch_per_image_v_and_q_from_a_cache(qwen, qbatch):
    other = qwen.prepare(tiny_images(2, seed=7), ["Is there a cat in the image?", "Is there a dog?"])
    sites = ["vision.blocks.0.attn.hook_v", "vision.blocks.0.attn.hook_q"]
    _, cache = run_with_cache(qwen, other, sites=sites)
    qkv = qwen.module("model.visual.blocks.0.attn.qkv")
    seen = {}
    handle = qkv.register_forward_hook(lambda m, a, o: seen.__setitem__("qkv", o.detach()))
    try:
        qwen.forward(other)
    finally:
        handle.remove()
    width = qkv.out_features // 3
    for part, site in ((2, sites[0]), (0, sites[1])):  # same image sizes: same rotary positions, so q patches exactly
        got = run_with_interventions(qwen, qbatch, [Patch(site=site, source=cache[site])])
        handle = _qkv_part_hook(qwen, part, seen["qkv"][:, part * width : (part + 1) * width])
        try:
            want = qwen.forward(qbatch)
        finally:
            handle.remove()
        assert (got - want).abs().max() <= 1e-5, site
        assert (got - qwen.forward(qbatch)).abs().max() > 1e-5


def test_images_of_two_sizes_are_padded_per_image(qwen):
    images = [tiny_images(1, size=32, seed=1)[0], tiny_images(1, size=48, seed=2)[0]]
    batch = qwen.prepare(images, ["Is there a cat?", "Is there a dog?"])
    grids = batch.inputs["image_grid_thw"].prod(-1).tolist()
    assert grids[0] != grids[1]
    _, c = run_with_cache(qwen, batch, sites=["vision.blocks.0.attn.hook_pattern"])
    pattern = c["vision.blocks.0.attn.hook_pattern"]
    n0, n1 = grids
    assert pattern.shape[-1] == max(n0, n1)
    assert torch.allclose(pattern[0, :, :n0, :n0].sum(-1), torch.ones(1))
    assert (pattern[0, :, n0:, :] == 0).all() and (pattern[0, :, :, n0:] == 0).all()
