"""The RMSNorms' ``hook_scale`` (TransformerLens's name): cached, frozen from another run, differentiated."""

from __future__ import annotations

import torch

from vlmlens.ops import Patch, logit_diff, run_with_cache
from vlmlens.ops import run_with_interventions as run
from vlmlens.testing import tiny_images

TEXT = "model.language_model"


def _eps(norm):
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", None))


def _gain(model, norm):
    return norm.weight.float() + model.adapter.text.rms_offset


def test_scales_are_the_rms_of_the_residuals_and_change_nothing(model, batch):
    sites = lambda s: s.tower.value == "text" and ("scale" in s.point.value or s.short.startswith("resid"))  # noqa: E731
    logits, cache = run_with_cache(model, batch, sites=sites)
    assert torch.equal(logits, model.forward(batch))
    n = model.n_layers
    for layer in range(n):
        for point, resid, part in (("ln1_scale", "resid_pre", "attn_norm"), ("ln2_scale", "resid_mid", "mlp_norm")):
            x = cache[resid, layer].float()
            eps = _eps(model.block_module("text", layer, part))
            want = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            torch.testing.assert_close(cache[point, layer], want, atol=0, rtol=0)
    final = cache["resid_post", n - 1].float()
    want = (final.pow(2).mean(-1, keepdim=True) + _eps(model.final_norm)).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_scale"], want, atol=0, rtol=0)


def test_freezing_the_final_scale_equals_a_hand_written_norm(model, reference, batch):
    other = model.prepare(tiny_images(2, seed=17), ["Is there a cat in the image?", "Is there a dog?"])
    assert other.layout.seq_len == batch.layout.seq_len
    _, src = run_with_cache(model, other, sites=["ln_final.hook_scale"])
    frozen = src["ln_final.hook_scale"]
    got = run(model, batch, [Patch(site="ln_final.hook_scale", source=frozen)])
    norm = reference.get_submodule(f"{TEXT}.norm")
    gain = _gain(model, norm)
    handle = norm.register_forward_hook(lambda m, a, out: (a[0].float() / frozen * gain).to(out.dtype))
    try:
        with torch.no_grad():
            want = reference(**batch.inputs).logits
    finally:
        handle.remove()
    real = ~batch.layout.padding  # a Patch writes prompt positions, not padding
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, model.forward(batch), atol=1e-4)


def test_scale_gradient_matches_autograd(model, reference, batch):
    metric = logit_diff(5, 7)
    logits, cache = run_with_cache(model, batch, sites=["text.blocks.1.ln2.hook_scale"], grad=metric)
    assert torch.equal(logits, model.forward(batch))  # the gradient path changes no value
    norm = reference.get_submodule(f"{TEXT}.layers.1").get_submodule(model.adapter.text.block.mlp_norm)
    gain, eps = _gain(model, norm), _eps(norm)
    leaf = {}

    def by_hand(module, args, out):
        x = args[0].float()
        scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt().detach().requires_grad_(True)
        leaf["s"] = scale
        return (x / scale * gain).to(out.dtype)

    handle = norm.register_forward_hook(by_hand)
    try:
        metric(reference(**batch.inputs).logits, batch).backward()
    finally:
        handle.remove()
        reference.zero_grad(set_to_none=True)
    torch.testing.assert_close(cache.grads["ln2_scale", 1], leaf["s"].grad, atol=1e-6, rtol=1e-4)
