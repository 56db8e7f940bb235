"""Per-call state: per-head results requested per call and layer, nested contexts, outer
contexts around sweeps, caches under edits, positions under left padding, lifecycle."""

from __future__ import annotations

import logging

import pytest
import torch

from vlmlens import HookedVLM
from vlmlens.errors import InputError, InterventionError
from vlmlens.ops import (
    Ablate,
    MaskPixels,
    MaskTokens,
    Patch,
    Steer,
    logit_diff,
    patch_heads,
    patch_residual,
    run_with_cache,
    run_with_interventions,
    sweep,
)
from vlmlens.testing import tiny_hf, tiny_images, tiny_vlm

ATOL = 1e-5


def layer(model, i):
    return model.module(f"model.language_model.layers.{i}")


def zero_head_hook(model, head):
    d = model.d_model // model.n_heads

    def hook(module, args):
        z = args[0].clone()
        z[..., head * d : (head + 1) * d] = 0
        return (z,)

    return hook


def test_result_sweep_over_layers_equals_one_by_one(model, batch):
    conditions = [[Ablate(site=f"text.blocks.{i}.attn.hook_result", heads=(h,))] for i in (0, 1) for h in (0, 3)]
    stacked = sweep(model, batch, conditions, chunk_size=4)
    for i, condition in enumerate(conditions):
        one = run_with_interventions(model, batch, condition)
        assert (stacked[i] - one).abs().max() <= ATOL, i
    assert not model._hooks.stack.results  # nothing requested outside a call


def test_nested_result_contexts_compose_and_restore(model, batch):
    outer = [Ablate(site="text.blocks.0.attn.hook_result", heads=(1,))]
    inner = [Ablate(site="text.blocks.1.attn.hook_result", heads=(2,))]
    with model.hooks(outer, batch):
        with model.hooks(inner, batch):
            both = model.forward(batch)
        outer_only = model.forward(batch)
    h0 = layer(model, 0).self_attn.o_proj.register_forward_pre_hook(zero_head_hook(model, 1))
    try:
        want_outer = model.forward(batch)
        h1 = layer(model, 1).self_attn.o_proj.register_forward_pre_hook(zero_head_hook(model, 2))
        want_both = model.forward(batch)
        h1.remove()
    finally:
        h0.remove()
    assert (both - want_both).abs().max() <= ATOL
    assert (outer_only - want_outer).abs().max() <= ATOL
    assert not model._hooks.stack.results


def test_cache_result_at_one_layer_with_result_edit_at_another(model, batch):
    logits, cache = run_with_cache(model, batch, sites=["text.blocks.1.attn.hook_result"],
                                   interventions=[Ablate(site="text.blocks.0.attn.hook_result", heads=(0,))])
    with model.hooks([Ablate(site="text.blocks.0.attn.hook_z", heads=(0,))], batch):
        _, want = run_with_cache(model, batch, sites=["text.blocks.1.attn.hook_result"])
        want_logits = model.forward(batch)
    assert (cache["result", 1] - want["result", 1]).abs().max() <= ATOL
    assert (logits - want_logits).abs().max() <= ATOL


def test_patch_heads_result_matches_single_patches(model):
    q = ["Is there a cat in the image?"]
    clean, corrupt = model.prepare(tiny_images(1, seed=1), q), model.prepare(tiny_images(1, seed=2), q)
    tok = model.tokenizer
    metric = logit_diff(tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
    result = patch_heads(model, clean, corrupt, metric, point="result")
    _, cache = run_with_cache(model, clean, sites=lambda s: s.short == "result")
    for lay in range(model.n_layers):
        for h in range(model.n_heads):
            site = f"text.blocks.{lay}.attn.hook_result"
            one = metric(run_with_interventions(model, corrupt, [Patch(site=site, source=cache[site], heads=(h,))]),
                         corrupt)
            assert abs(float(result.values[lay, h]) - float(one)) <= 1e-4, (lay, h)
    assert not torch.allclose(result.values[0], torch.full_like(result.values[0], result.corrupt_metric), atol=1e-6)


def test_outer_hooks_around_sweep_apply_to_every_copy(model, batch):
    outer = [Ablate(site="text.blocks.0.hook_resid_post", positions="last"),
             MaskPixels(patches=[[(0, 0)], [(1, 1)]]),
             MaskTokens(patches=[[(1, 0)], [(0, 1)]])]
    conditions = [[], [Steer(site="text.blocks.1.hook_resid_post", vector=torch.ones(model.d_model), positions="image")],
                  [Ablate(site="text.blocks.1.attn.hook_z", heads=(1,))]]
    with model.hooks(outer, batch):
        stacked = sweep(model, batch, conditions)
    for i, condition in enumerate(conditions):
        one = run_with_interventions(model, batch, outer + condition)
        assert (stacked[i] - one).abs().max() <= ATOL, i


def test_cache_stores_what_the_model_used(model, batch):
    sites = ["text.blocks.0.hook_resid_post", "text.blocks.1.hook_resid_pre", "text.blocks.1.hook_resid_post"]
    edit = [Ablate(site="text.blocks.0.hook_resid_post", dims=(0, 1, 2))]
    _, cache = run_with_cache(model, batch, sites=sites, interventions=edit)
    assert (cache["resid_post", 0][..., :3] == 0).all()
    assert torch.equal(cache["resid_pre", 1], cache["resid_post", 0])
    seen = {}

    def keep(module, args, out):
        seen["h"] = out[0] if isinstance(out, tuple) else out

    def zero(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[..., :3] = 0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handles = [layer(model, 0).register_forward_hook(zero), layer(model, 1).register_forward_hook(keep)]
    try:
        model.forward(batch)
    finally:
        for h in handles:
            h.remove()
    assert (cache["resid_post", 1] - seen["h"]).abs().max() <= ATOL


def test_patch_residual_aligns_roles_under_left_padding(family):
    model = tiny_vlm(family)
    qs = ["Is there a cat in the image at all?", "Is there a dog?"]
    clean, corrupt = model.prepare(tiny_images(2, seed=1), qs), model.prepare(tiny_images(2, seed=2), qs)
    assert clean.layout.padding_side == "left" and clean.layout.padding.any()
    metric = logit_diff(model.tokenizer.convert_tokens_to_ids("yes"), model.tokenizer.convert_tokens_to_ids("no"))
    result = patch_residual(model, clean, corrupt, metric, layers=[1], positions="image")
    _, cache = run_with_cache(model, clean, sites=["text.blocks.1.hook_resid_pre"])
    source = cache["resid_pre", 1]
    k = 3  # the 4th image token of every sample, at a different absolute position in each
    mask = torch.zeros_like(clean.layout.padding)
    for b in range(2):
        mask[b, clean.layout.images[b][0].start + k] = True
    assert mask[0].nonzero().item() != mask[1].nonzero().item()

    def write(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[mask] = source[mask]
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    h = layer(model, 1).register_forward_pre_hook(write, with_kwargs=True)
    try:
        want = metric(model.forward(corrupt), corrupt)
    finally:
        h.remove()
    assert abs(float(result.values[0, k]) - float(want)) <= 1e-4


def test_wrapping_twice_is_refused_and_unwrap_restores(family):
    hf, processor = tiny_hf(family)
    reference, _ = tiny_hf(family)
    model = HookedVLM.from_hf(hf, processor)
    with pytest.raises(InputError, match="already wrapped by a HookedVLM"):
        HookedVLM.from_hf(hf, processor)
    batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    hooked = model.forward(batch)
    plain = model.unwrap()
    assert not any(type(m).__name__ == "HookPoint" for m in plain.modules())
    assert plain.config.text_config._attn_implementation == "eager"
    ours = [fn for m in plain.modules() for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
            if getattr(fn, "__module__", "").startswith("vlmlens")]
    assert not ours
    with torch.no_grad():
        assert torch.equal(plain(**batch.inputs).logits, hooked)
        assert torch.equal(plain(**batch.inputs).logits, reference(**batch.inputs).logits)
    again = HookedVLM.from_hf(plain, processor)  # wrapping again after unwrap works
    assert torch.equal(again.forward(batch), hooked)


def test_patch_source_of_another_batch_size_is_refused(model, batch, single):
    _, cache = run_with_cache(model, single, sites=["text.blocks.0.hook_resid_post"])
    with pytest.raises(InterventionError, match=r"expected \(2, "):
        run_with_interventions(model, batch, [Patch(site="text.blocks.0.hook_resid_post", source=cache["resid_post", 0])])


def test_mask_pixels_bool_tensor_is_validated(model, batch):
    rows, cols = batch.layout.grid(0)
    good = torch.zeros(2, rows, cols, dtype=torch.bool)
    good[0, 0, 0] = good[1, rows - 1, cols - 1] = True
    lists = [[(0, 0)], [(rows - 1, cols - 1)]]
    assert torch.equal(run_with_interventions(model, batch, [MaskPixels(patches=good)]),
                       run_with_interventions(model, batch, [MaskPixels(patches=lists)]))
    with pytest.raises(InterventionError, match="patch mask is"):
        run_with_interventions(model, batch, [MaskPixels(patches=torch.zeros(2, rows + 1, cols, dtype=torch.bool))])
    with pytest.raises(InterventionError, match="bool tensor of shape"):
        run_with_interventions(model, batch, [MaskPixels(patches=torch.zeros(2, rows, cols))])


def test_unused_llava_vision_layer_is_flagged(caplog):
    model = tiny_vlm("llava")
    feature = model.hf_model.config.vision_feature_layer
    assert model.unused_vision_layers == tuple(range(feature % (model.n_vision_layers + 1), model.n_vision_layers))
    if not model.unused_vision_layers:
        model.hf_model.config.vision_feature_layer = -2
    batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    last = model.n_vision_layers - 1
    with caplog.at_level(logging.WARNING, logger="vlmlens"):
        edited = run_with_interventions(model, batch, [Ablate(site=f"vision.blocks.{last}.hook_resid_post")])
    assert "never reaches the language model" in caplog.text
    assert torch.equal(edited, model.forward(batch))  # and indeed changes nothing
    model.hf_model.config.vision_feature_layer = feature


def test_edits_reach_layers_read_through_transformers_capture_even_if_it_came_first():
    hf, processor = tiny_hf("llava")
    fresh, _ = tiny_hf("llava")
    used = HookedVLM.from_hf(fresh, processor)
    batch = used.prepare(tiny_images(1), ["Is there a cat?"])
    with torch.no_grad():
        hf(**batch.inputs)  # transformers installs its hidden-state capture hooks now, before vlmlens's
    model = HookedVLM.from_hf(hf, processor)
    feature = model.hf_model.config.vision_feature_layer % (model.n_vision_layers + 1) - 1  # the block it reads
    edit = [Ablate(site=f"vision.blocks.{feature}.hook_resid_post", dims=(0, 1, 2, 3))]
    got = run_with_interventions(model, batch, edit)
    assert (got - model.forward(batch)).abs().max() > 1e-5
    assert (got - run_with_interventions(used, batch, edit)).abs().max() <= 1e-6


def test_a_result_edit_in_one_condition_leaves_its_siblings_exact(model, batch):
    stacked = sweep(model, batch, [[], [Ablate(site="text.blocks.0.attn.hook_result", heads=(1,))]])
    assert torch.equal(stacked[0], model.forward(batch))


def test_layer_requests_are_validated_and_normalised(model, batch):
    with model.patterns([("text", -1), "text.blocks.0.attn.hook_pattern"]):
        assert set(model._hooks.stack.patterns) == {(model.text.pattern[0].tower, model.n_layers - 1),
                                                    (model.text.pattern[0].tower, 0)}
    with pytest.raises(InputError, match="not a \\(tower, layer\\) pair"):
        with model.result_hooks([3]):
            pass
    with pytest.raises(Exception, match="layer 7 is out of range"):
        with model.patterns([("text", 7)]):
            pass
    assert not model._hooks.stack.patterns and not model._hooks.stack.results


def test_role_means_over_batches_of_different_lengths_never_count_padding(model):
    from vlmlens.ops import mean_activation

    site = "text.blocks.0.hook_resid_post"
    a = model.prepare(tiny_images(2, seed=1), ["Is there a cat in the image at all?", "Is there a dog?"])
    b = model.prepare(tiny_images(1, seed=2), ["Is there a bus?"])
    assert a.layout.seq_len != b.layout.seq_len and a.layout.padding.any()
    role = mean_activation(model, [a, b], site)
    acts, questions, images = [], [], []
    for batch in (a, b):
        _, cache = run_with_cache(model, batch, sites=[site])
        x = cache[site]
        for s in range(len(batch)):
            start, stop = batch.layout.question[s]
            last = batch.layout.last_prompt[s]
            questions += [x[s, p] for p in range(start, stop) if p != last]
            span = batch.layout.images[s][0]
            images.append(x[s, span.start : span.stop])
            acts.append(x[s, last])
    assert torch.allclose(role.last, torch.stack(acts).mean(0), atol=1e-6)
    assert torch.allclose(role.question, torch.stack(questions).mean(0), atol=1e-6)
    grid = a.layout.images[0][0].grid
    assert torch.allclose(role.image[grid].flatten(0, 1), torch.stack(images).mean(0), atol=1e-6)
    assert role.counts["image"] == 3
