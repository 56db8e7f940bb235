"""The TransformerLens-shaped surface: names, run_with_hooks, cfg, weights, tokens, and TL's own code."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching

from vlmlens.errors import InputError, InterventionError
from vlmlens.ops import (
    Ablate,
    Hook,
    Patch,
    Steer,
    logit_diff,
    patch_heads,
    patch_residual,
    run_with_cache,
)
from vlmlens.ops import run_with_interventions as run
from vlmlens.sites import Site
from vlmlens.testing import tiny_images, tiny_vlm
from vlmlens.tl import get_act_name

YES, NO = 5, 7


def test_tl_names_are_text_aliases():
    assert Site.parse("blocks.1.hook_resid_post") == Site.parse("text.blocks.1.hook_resid_post")
    assert Site.parse("hook_embed") == Site.parse("text.hook_embed")
    assert Site.parse("ln_final.hook_normalized").tl_name == "ln_final.hook_normalized"
    assert get_act_name("resid_pre", 3) == "blocks.3.hook_resid_pre"
    assert get_act_name("pre", 0) == "blocks.0.mlp.hook_pre" and get_act_name("attn", 1) == "blocks.1.attn.hook_pattern"
    assert get_act_name("embed") == "hook_embed"
    assert Site.parse(get_act_name("z", 0, tower="vision")).tower.value == "vision"
    # TL's q/k names mean what they mean in TL: hook_q before the rotary embedding, hook_rot_q after.
    assert Site.parse("blocks.0.attn.hook_q") == Site.parse("text.blocks.0.attn.hook_q_pre_rope")
    assert Site.parse("blocks.0.attn.hook_rot_k") == Site.parse("text.blocks.0.attn.hook_k")
    assert get_act_name("q", 1) == "blocks.1.attn.hook_q" and get_act_name("rot_q", 1) == "blocks.1.attn.hook_rot_q"
    assert get_act_name("scale", 1, "ln2") == "blocks.1.ln2.hook_scale"
    with pytest.raises(InputError, match="needs a layer"):
        get_act_name("z")


def test_tl_names_round_trip(model):
    for site in model.sites():
        assert Site.parse(site.tl_name) == site


def test_run_with_hooks_equals_the_same_intervention(model, batch):
    def zero_head_1(z, hook):  # TL style: edit in place, return None
        z[:, :, 1] = 0.0

    def steer(resid, hook):  # TL style: return a new tensor
        return resid + 0.5

    got = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_1),
                                                 (get_act_name("resid_post", 1), steer)])
    want = run(model, batch, [Ablate(site="text.blocks.0.attn.hook_z", heads=(1,)),
                              Steer(site="text.blocks.1.hook_resid_post", vector=torch.full((model.d_model,), 0.5))])
    assert torch.equal(got, want)
    assert model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_1)], return_type=None) is None


def test_filters_see_tl_names_and_hooks_know_their_layer(model, batch):
    seen = []

    def record(act, hook):
        seen.append((hook.name, hook.layer()))

    model.run_with_hooks(batch, fwd_hooks=[(lambda name: name.startswith("blocks.") and name.endswith("hook_z"),
                                            record)])
    assert seen == [(f"blocks.{layer}.attn.hook_z", layer) for layer in range(model.n_layers)]
    seen.clear()
    model.run_with_hooks(batch, fwd_hooks=[(lambda name: name.endswith("hook_resid_post"), record)])
    assert {name for name, _ in seen} >= {"vision.blocks.0.hook_resid_post", "blocks.0.hook_resid_post"}


def test_hook_in_generation_and_sweep_equals_steer(model, single):
    vector = torch.full((model.d_model,), 0.3)
    hook = Hook(site="blocks.1.hook_resid_pre", fn=lambda act, hook: act + vector)
    steer = Steer(site="text.blocks.1.hook_resid_pre", vector=vector)
    a = model.generate(single, max_new_tokens=4, interventions=[hook])
    b = model.generate(single, max_new_tokens=4, interventions=[steer])
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.scores, b.scores)
    from vlmlens.ops import sweep

    other = Ablate(site="text.blocks.0.hook_mlp_out")
    assert torch.equal(sweep(model, single, [[hook], [other]]), sweep(model, single, [[steer], [other]]))


def test_hook_errors(model, batch):
    with pytest.raises(InterventionError, match="returned"):
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", lambda act, hook: act[:, :1])])
    with pytest.raises(InterventionError, match="callable"):
        Hook(site="blocks.0.hook_resid_post", fn=3)
    with pytest.raises(InputError, match="grad=metric"):
        model.run_with_hooks(batch, bwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: None)])
    with pytest.raises(InputError, match="fwd_hooks entry"):
        model.run_with_hooks(batch, fwd_hooks=["blocks.0.hook_resid_post"])


def test_cfg_and_weights_reproduce_the_forward(model, batch):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (
        model.n_layers, model.d_model, model.n_heads, model.n_kv_heads)
    assert cfg.d_head * cfg.n_heads == model.W_O.shape[1] * model.W_O.shape[2]
    sites = lambda s: s.tower.value == "text"
    logits, cache = run_with_cache(model, batch, sites=sites)
    layer = cfg.n_layers - 1
    # W_O: heads' z through W_O add up to o_proj's output; W_U: the unembedding.
    z = cache["z", layer]  # batch pos head d_head
    o = torch.einsum("bphd,hdm->bpm", z, model.W_O[layer])
    o_proj = model.block_module("text", layer, "o_proj")
    torch.testing.assert_close(o, o_proj(z.flatten(-2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["ln_final.hook_normalized"] @ model.W_U, logits, atol=1e-4, rtol=1e-4)
    assert model.W_E.shape == (cfg.d_vocab, cfg.d_model)
    # W_Q / W_K / W_V: the projections of the normed residual, per head (GQA keys repeated per query head).
    normed = model.block_module("text", layer, "attn_norm")(cache["resid_pre", layer])
    q_proj = model.block_module("text", layer, "q_proj")
    q = torch.einsum("bpm,hmd->bphd", normed, model.W_Q[layer]).flatten(-2)
    q = q + (q_proj.bias if q_proj.bias is not None else 0.0)
    torch.testing.assert_close(q, q_proj(normed), atol=1e-5, rtol=1e-5)
    group = cfg.n_heads // cfg.n_key_value_heads
    assert torch.equal(model.W_K[layer, 0], model.W_K[layer, group - 1])
    # W_gate / W_in / W_out: the gated MLP.
    mlp_in = model.block_module("text", layer, "mlp_norm")(cache["resid_mid", layer])
    torch.testing.assert_close(cache["mlp_post", layer] @ model.W_out[layer],
                               model.block_module("text", layer, "mlp_down")(cache["mlp_post", layer]),
                               atol=1e-5, rtol=1e-5)
    up = mlp_in @ model.W_in[layer]
    post = cache["mlp_post", layer]
    gate = post / up  # act_fn(x W_gate) recovered where up is not tiny
    keep = up.abs() > 1e-2
    act = model.block_module("text", layer, "mlp").act_fn(mlp_in @ model.W_gate[layer])
    torch.testing.assert_close(gate[keep], act[keep], atol=1e-3, rtol=1e-3)


def test_tokens_round_trip(model, batch):
    ids = model.to_tokens("Is there a cat?")
    assert ids.dim() == 2 and ids.shape[0] == 1
    assert model.to_string(ids[0]).endswith("Is there a cat?")
    assert model.to_str_tokens("Is there a cat?") == model.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert len(model.to_str_tokens(batch)) == 2 and torch.equal(model.to_tokens(batch), batch.input_ids)
    with pytest.raises(InputError, match="to_tokens"):
        model.to_tokens(3)


@pytest.fixture(scope="module")
def pair(model):
    images = tiny_images(2, seed=9)
    return (model.prepare([images[0]], ["Is there a cat in the image?"]),
            model.prepare([images[1]], ["Is there a cat in the image?"]))


def test_transformer_lens_patching_runs_on_hooked_vlm_and_agrees(model, pair):
    clean, corrupt = pair
    metric = logit_diff(YES, NO)
    _, clean_cache = run_with_cache(model, clean, sites=lambda s: s.tower.value == "text")
    ours = patch_residual(model, clean, corrupt, metric, positions=list(range(clean.layout.seq_len)))
    theirs = tl_patching.get_act_patch_resid_pre(model, corrupt, clean_cache, lambda logits: metric(logits, corrupt))
    torch.testing.assert_close(theirs, ours.values.to(theirs.dtype), atol=1e-5, rtol=1e-5)
    ours = patch_heads(model, clean, corrupt, metric, point="z")
    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache,
                                                             lambda logits: metric(logits, corrupt))
    torch.testing.assert_close(theirs, ours.values.to(theirs.dtype), atol=1e-5, rtol=1e-5)
    # And TL's hook functions through run_with_hooks equal a vlmlens Patch exactly.
    site = "blocks.1.hook_resid_pre"

    def put(act, hook):
        act[:, 3] = clean_cache[site][:, 3]

    mask = torch.zeros(1, clean.layout.seq_len, dtype=torch.bool)
    mask[0, 3] = True
    assert torch.equal(model.run_with_hooks(corrupt, fwd_hooks=[(site, put)]),
                       run(model, corrupt, [Patch(site=site, source=clean_cache[site], positions=mask)]))


def test_transformer_lens_cache_methods_agree(family, batch):
    model = tiny_vlm(family)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # norms with gains far from 1, so a gain applied twice (or never) shows
        for name, param in model.hf_model.named_parameters():
            if name.startswith("model.language_model") and "norm" in name:
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
    logits, cache = run_with_cache(model, batch, sites=lambda s: s.tower.value == "text")
    tl = cache.to_transformer_lens()
    # TL's apply_ln divides by the scale and leaves the gain to its folded W_U; vlmlens applies it.
    parts = cache.decompose_resid()
    gain = model.final_norm.weight.float() + model.adapter.text.rms_offset
    torch.testing.assert_close(tl.apply_ln_to_stack(parts) * gain, cache.apply_ln_to_stack(parts), atol=1e-5, rtol=1e-5)
    for layer in (None, 1):
        ours, labels = cache.decompose_resid(layer, return_labels=True)
        theirs, tl_labels = tl.decompose_resid(layer, return_labels=True)
        assert labels == tl_labels
        torch.testing.assert_close(theirs, ours)
    ours_stack, ours_labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    tl_stack, tl_labels = tl.accumulated_resid(incl_mid=True, return_labels=True)
    assert ours_labels == tl_labels
    torch.testing.assert_close(tl_stack, ours_stack)
    parts = cache.decompose_resid()
    torch.testing.assert_close(tl.logit_attrs(parts, YES, NO), cache.logit_attrs(parts, YES, NO),
                               atol=1e-5, rtol=1e-5)
    last = logits[:, :, YES] - logits[:, :, NO]
    torch.testing.assert_close(tl.logit_attrs(parts, YES, NO).sum(0), last, atol=2e-4, rtol=1e-4)


def test_run_with_cache_names_filter(model, batch):
    _, by_filter = model.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_resid_post"))
    assert {s.tl_name for s in by_filter} >= {"blocks.0.hook_resid_post", "vision.blocks.0.hook_resid_post"}
    _, by_name = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    assert torch.equal(by_name["blocks.1.hook_resid_post"], by_filter["blocks.1.hook_resid_post"])
    with pytest.raises(InputError, match="not both"):
        model.run_with_cache(batch, names_filter="blocks.1.hook_resid_post", sites=["text.hook_embed"])
