"""ImagePatches address the same image region at text, vision-tower and projector sites."""

from __future__ import annotations

import torch

from vlmlens.ops import (
    Ablate,
    MaskPixels,
    MaskTokens,
    run_with_cache,
    run_with_interventions,
)
from vlmlens.ops.positions import ImagePatches

PATCHES = [[(0, 1), (1, 1)], [(1, 0)]]


def changed_positions(model, batch, site):
    """Positions (row, index) of ``site`` that greying the chosen pixels changes."""
    _, clean = run_with_cache(model, batch, sites=[site])
    _, grey = run_with_cache(model, batch, sites=[site], interventions=[MaskPixels(patches=PATCHES)])
    diff = (clean[site] - grey[site]).abs().flatten(2).amax(-1) > 0  # rows positions
    return diff


def test_patch_positions_in_the_vision_embedding_are_what_pixel_masking_changes(model, batch):
    site = model.site("vision.hook_embed")
    diff = changed_positions(model, batch, site)
    _, cache = run_with_cache(model, batch, sites=[site])
    act = cache[site]
    edited = run_with_cache(model, batch, sites=[site],
                            interventions=[Ablate(site=site, positions=ImagePatches(PATCHES))])[1][site]
    chosen = (edited != act).flatten(2).any(-1)  # the positions ImagePatches resolved to
    assert chosen.any()
    assert torch.equal(chosen, diff)


def test_projector_output_patch_equals_token_mask(model, batch):
    got = run_with_interventions(model, batch, [Ablate(site="projector.hook_out", positions=ImagePatches(PATCHES))])
    want = run_with_interventions(model, batch, [MaskTokens(patches=PATCHES)])
    assert (got - want).abs().max() <= 1e-6
    assert (got - model.forward(batch)).abs().max() > 1e-5


def test_vision_block_patch_ablation_equals_hand_edit(model, batch):
    site = "vision.blocks.0.hook_resid_post"
    got = run_with_interventions(model, batch, [Ablate(site=site, positions=ImagePatches(PATCHES))])
    a = model.adapter
    block = model.module(f"{a.vision.layers}.0")
    spans = [s for sample in batch.layout.images for s in sample]
    w = a.merge**2

    def zero(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        base = 0
        for j, span in enumerate(spans):
            for r, c in PATCHES[j]:
                t = r * span.grid[1] + c
                if a.vision.batched:
                    h[j, a.vision_cls + t] = 0
                else:
                    h[base + t * w : base + (t + 1) * w] = 0
            base += span.n_tokens * w
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = block.register_forward_hook(zero, prepend=True)  # before transformers' hidden-state capture
    try:
        want = model.forward(batch)
    finally:
        handle.remove()
    assert (got - want).abs().max() <= 1e-6
    assert (got - model.forward(batch)).abs().max() > 1e-6


def test_text_site_image_patches_are_the_image_tokens(model, batch):
    got = run_with_interventions(model, batch, [Ablate(site="text.hook_embed", positions=ImagePatches(PATCHES))])
    want = run_with_interventions(model, batch, [MaskTokens(patches=PATCHES)])
    assert torch.equal(got, want)


def test_outer_vision_edit_around_a_sweep_reaches_every_copy(model, batch):
    from vlmlens.ops import sweep

    outer = [Ablate(site="vision.blocks.0.hook_resid_post", positions=ImagePatches(PATCHES)),
             Ablate(site="projector.hook_out", positions=ImagePatches([[(1, 1)], [(0, 0)]]))]
    conditions = [[], [Ablate(site="text.blocks.0.attn.hook_z", heads=(1,))]]
    with model.hooks(outer, batch):
        stacked = sweep(model, batch, conditions)
    for i, condition in enumerate(conditions):
        assert (stacked[i] - run_with_interventions(model, batch, outer + condition)).abs().max() <= 1e-5, i
