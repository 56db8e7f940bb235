"""Gradients at every site type equal an autograd reference on the plain HF model with hand hooks."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from vlmlens.errors import InputError
from vlmlens.ops import Ablate, logit_diff, run_with_cache
from vlmlens.testing import tiny_hf, tiny_images, tiny_vlm

TEXT = "model.language_model"
CAPTURED: dict[str, torch.Tensor] = {}


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """Plain eager attention that also records the post-rotary q and k it is given."""
    if getattr(module, "layer_idx", None) == 0 and "q" not in CAPTURED and query.shape[0] > 0:
        CAPTURED["q"], CAPTURED["k"] = query, key
    return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("reference_capture", _capture_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register("reference_capture", eager_mask)


def metric_for(model):
    tok = model.tokenizer
    return logit_diff(tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))


def reference_grads(family, batch, metric):
    """d metric / d (hand-captured tensors) on the plain model."""
    hf, _ = tiny_hf(family)
    hf.config.text_config._attn_implementation = "reference_capture"
    CAPTURED.clear()
    layers = hf.get_submodule(f"{TEXT}.layers")
    seen: dict[str, torch.Tensor] = {}

    def out(name, index=None):
        def hook(module, args, output):
            seen[name] = output if index is None else output[index]
        return hook

    def inp(name):
        def hook(module, args, kwargs):
            seen[name] = args[0] if args else kwargs["hidden_states"]
        return hook

    handles = [
        hf.get_submodule(TEXT).register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("embed", k["inputs_embeds"]), with_kwargs=True),
        layers[0].register_forward_hook(out("resid_post0", None)),
        layers[1].register_forward_pre_hook(inp("resid_pre1"), with_kwargs=True),
        layers[0].self_attn.register_forward_hook(out("attn_out0", 0)),
        layers[0].self_attn.register_forward_hook(out("pattern0", 1)),
        layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z0", a[0])),
        layers[0].self_attn.v_proj.register_forward_hook(out("v0")),
        layers[0].post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.__setitem__("mid0", a[0])),
        layers[1].mlp.register_forward_hook(out("mlp_out1")),
        layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("mlp_post1", a[0])),
        hf.get_submodule(f"{TEXT}.norm").register_forward_hook(out("ln_final")),
    ]
    try:
        logits = hf(**batch.inputs).logits
    finally:
        for h in handles:
            h.remove()
    seen |= {k: v for k, v in CAPTURED.items()}
    names = list(seen)
    grads = torch.autograd.grad(metric(logits, batch), [seen[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, grads)}


SITES = {
    "embed": "text.hook_embed", "resid_post0": "text.blocks.0.hook_resid_post",
    "resid_pre1": "text.blocks.1.hook_resid_pre", "attn_out0": "text.blocks.0.hook_attn_out",
    "pattern0": "text.blocks.0.attn.hook_pattern", "z0": "text.blocks.0.attn.hook_z",
    "v0": "text.blocks.0.attn.hook_v", "mid0": "text.blocks.0.hook_resid_mid",
    "mlp_out1": "text.blocks.1.hook_mlp_out", "mlp_post1": "text.blocks.1.mlp.hook_post",
    "ln_final": "text.ln_final.hook_normalized", "q": "text.blocks.0.attn.hook_q", "k": "text.blocks.0.attn.hook_k",
}


def test_text_site_gradients_equal_autograd_reference(family):
    model = tiny_vlm(family)
    batch = model.prepare(tiny_images(2, seed=4), ["Is there a cat in the image?", "Is there a dog?"])
    metric = metric_for(model)
    sites = list(SITES.values()) + ["text.blocks.0.attn.hook_result"]
    _, cache = run_with_cache(model, batch, sites=sites, grad=metric)
    want = reference_grads(family, batch, metric)
    for name, site in SITES.items():
        got = cache.grads[site]
        ref = want[name]
        if name in ("z0", "v0"):
            ref = ref.reshape(got.shape)
        if name in ("q", "k"):
            ref = ref.transpose(1, 2)
        assert got.shape == ref.shape, name
        assert (got - ref).abs().max() <= 1e-6 * max(1.0, float(ref.abs().max())), name
        assert ref.abs().max() > 0, name
    # every head's result feeds the attention output unchanged: its gradient is d metric / d attn_out
    result = cache.grads["text.blocks.0.attn.hook_result"]
    for h in range(model.n_heads):
        assert (result[:, :, h] - want["attn_out0"]).abs().max() <= 1e-6


def test_vision_and_projector_gradients(family):
    model = tiny_vlm(family)
    batch = model.prepare(tiny_images(1, seed=4), ["Is there a cat in the image?"])
    metric = metric_for(model)
    sites = ["vision.hook_embed", "vision.blocks.0.hook_resid_post", "projector.hook_out"]
    _, cache = run_with_cache(model, batch, sites=sites, grad=metric)
    hf, _ = tiny_hf(family)
    a = model.adapter
    seen = {}
    handles = [hf.get_submodule(a.vision.embed).register_forward_hook(lambda m, i, o: seen.__setitem__("embed", o)),
               hf.get_submodule(f"{a.vision.layers}.0").register_forward_hook(
                   lambda m, i, o: seen.__setitem__("block0", o[0] if isinstance(o, tuple) else o)),
               hf.get_submodule(a.projector).register_forward_hook(lambda m, i, o: seen.__setitem__("proj", o))]
    try:
        logits = hf(**batch.inputs).logits
    finally:
        for h in handles:
            h.remove()
    names = ["embed", "block0", "proj"]
    grads = torch.autograd.grad(metric(logits, batch), [seen[n] for n in names])
    for site, ref in zip(sites, grads):
        got = cache.grads[site]
        assert (got - ref.reshape(got.shape)).abs().max() <= 1e-6 * max(1.0, float(ref.abs().max())), site
        assert ref.abs().max() > 0, site


def test_gradients_with_an_intervention_active(model, batch):
    metric = metric_for(model)
    edit = [Ablate(site="text.blocks.0.hook_resid_post", dims=(0, 1))]
    _, cache = run_with_cache(model, batch, sites=["text.blocks.0.hook_resid_post", "text.blocks.1.hook_resid_pre"],
                              grad=metric, interventions=edit)
    assert (cache["resid_post", 0][..., :2] == 0).all()
    # the edit replaces dims 0, 1 after the site fires... the cached (post-edit) value is what downstream reads
    assert torch.equal(cache.grads["text.blocks.0.hook_resid_post"], cache.grads["text.blocks.1.hook_resid_pre"])
    _, plain = run_with_cache(model, batch, sites=["text.blocks.1.hook_resid_pre"], grad=metric)
    assert not torch.allclose(plain.grads["text.blocks.1.hook_resid_pre"], cache.grads["text.blocks.1.hook_resid_pre"])


def test_gradient_positions_and_no_grad_left_behind(model, batch):
    metric = metric_for(model)
    site = "text.blocks.1.hook_resid_post"
    _, full = run_with_cache(model, batch, sites=[site], grad=metric)
    _, last = run_with_cache(model, batch, sites=[site], grad=metric, positions="last")
    rows = torch.arange(len(batch))
    assert torch.equal(last.grads[site], full.grads[site][rows, torch.tensor(batch.layout.last_prompt)])
    assert not full[site].requires_grad and not full.grads[site].requires_grad
    assert all(p.grad is None for p in model.hf_model.parameters())


def test_bad_metric_is_refused(model, batch):
    with pytest.raises(InputError, match="must return a scalar"):
        run_with_cache(model, batch, sites=["text.blocks.0.hook_resid_post"], grad=lambda logits, b: logits[:, -1])
