"""q and k before the rotary embedding (text tower): cached, edited and differentiated exactly."""

from __future__ import annotations

import pytest
import torch

from vlmlens.errors import SiteNotFoundError
from vlmlens.ops import Ablate, logit_diff, run_with_cache
from vlmlens.ops import run_with_interventions as run
from vlmlens.sites import Site

TEXT = "model.language_model"


def _attn(reference, layer):
    return reference.get_submodule(f"{TEXT}.layers.{layer}.self_attn")


def test_pre_rope_q_and_k_are_the_projections(model, reference, batch):
    got = {}
    attn = _attn(reference, 1)
    hooks = [attn.q_proj.register_forward_hook(lambda m, a, o: got.__setitem__("q", o)),
             attn.k_proj.register_forward_hook(lambda m, a, o: got.__setitem__("k", o))]
    with torch.no_grad():
        reference(**batch.inputs)
    for h in hooks:
        h.remove()
    _, cache = run_with_cache(model, batch, sites=["blocks.1.attn.hook_q_pre_rope", "blocks.1.attn.hook_k_pre_rope"])
    q, k = cache["q_pre_rope", 1], cache["k_pre_rope", 1]
    assert q.shape[2] == model.n_heads and k.shape[2] == model.n_kv_heads
    assert torch.equal(q.flatten(-2), got["q"]) and torch.equal(k.flatten(-2), got["k"])


def test_ablating_pre_rope_heads_equals_a_hand_edit(model, reference, batch):
    got = run(model, batch, [Ablate(site="text.blocks.0.attn.hook_k_pre_rope", heads=(0,), positions="image")])
    image = batch.layout.mask("image")
    d = model.block_module("text", 0, "attn").head_dim

    def edit(module, args, out):
        out = out.clone()
        out[..., :d][image] = 0
        return out

    handle = _attn(reference, 0).k_proj.register_forward_hook(edit)
    try:
        with torch.no_grad():
            want = reference(**batch.inputs).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, model.forward(batch), atol=1e-5)


def test_pre_rope_gradients_match_autograd(model, reference, batch):
    metric = logit_diff(5, 7)
    _, cache = run_with_cache(model, batch, sites=["blocks.1.attn.hook_q_pre_rope"], grad=metric)
    grad = cache.grads["q_pre_rope", 1]
    kept = {}

    def keep(module, args, out):
        out.retain_grad()
        kept["q"] = out

    handle = _attn(reference, 1).q_proj.register_forward_hook(keep)
    try:
        metric(reference(**batch.inputs).logits, batch).backward()
    finally:
        handle.remove()
        reference.zero_grad(set_to_none=True)
    torch.testing.assert_close(grad.flatten(-2), kept["q"].grad, atol=1e-6, rtol=1e-5)
    assert grad.abs().sum() > 0


def test_vision_has_no_pre_rope_sites(model):
    with pytest.raises(SiteNotFoundError, match="no rotary"):
        Site.parse("vision.blocks.0.attn.hook_q_pre_rope")
    assert not any(s.short.endswith("pre_rope") and s.tower.value == "vision" for s in model.sites())
