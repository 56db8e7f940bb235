"""``attn.hook_attn_scores``: the pre-softmax scores, cached and edited, against plain torch."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from vlmlens.ops import Hook, run_with_cache
from vlmlens.ops import run_with_interventions as run
from vlmlens.testing import tiny_hf, tiny_images, tiny_vlm

EDIT: dict[str, torch.Tensor] = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention written out, adding EDIT["bias"] to layer 1's masked scores."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, 1)
    value = value.repeat_interleave(groups, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else module.scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    if getattr(module, "layer_idx", None) == 1 and "bias" in EDIT:
        scores = scores + EDIT["bias"]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("reference_scores", _reference_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register("reference_scores", eager_mask)


def test_scores_are_the_pre_softmax_logits(model, batch):
    sites = [f"text.blocks.1.attn.hook_{x}" for x in ("q", "k", "attn_scores", "pattern")]
    _, cache = run_with_cache(model, batch, sites=sites)
    q, k, scores, pattern = (cache[s] for s in sites)
    assert scores.shape == pattern.shape
    assert torch.equal(torch.softmax(scores, -1, dtype=torch.float32).to(pattern.dtype), pattern)
    k = k.repeat_interleave(q.shape[2] // k.shape[2], 2)
    raw = torch.einsum("bqhd,bkhd->bhqk", q, k) * model.block_module("text", 1, "attn").scaling
    # Unmasked entries of real queries (padding queries see only masked keys): q.k * scale there.
    real = (pattern > 0) & ~batch.layout.padding[:, None, :, None]
    torch.testing.assert_close(scores[real], raw[real], atol=1e-5, rtol=1e-5)


def test_editing_scores_equals_a_hand_written_attention(family, model, batch):
    bias = torch.zeros(1, model.n_heads, 1, batch.layout.seq_len)
    bias[0, 0, 0, batch.layout.mask("image")[0]] = -3.0  # head 0: push attention away from sample 0's image
    bias[0, 2] = 0.5 * torch.linspace(-1, 1, batch.layout.seq_len)
    got = model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_attn_scores", lambda s, hook: s + bias)])
    reference, _ = tiny_hf(family)
    for cfg in (reference.config, reference.config.text_config):
        cfg._attn_implementation = "reference_scores"
    EDIT["bias"] = bias
    try:
        with torch.no_grad():
            want = reference(**batch.inputs).logits
    finally:
        EDIT.clear()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, model.forward(batch), atol=1e-4)


def test_scores_on_an_sdpa_model_switch_that_layer_to_eager():
    model = tiny_vlm("llava", attn_implementation="sdpa")
    batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    _, cache = run_with_cache(model, batch, sites=["text.blocks.0.attn.hook_attn_scores"])
    assert cache["blocks.0.attn.hook_attn_scores"].shape[-1] == batch.layout.seq_len
    unchanged = run(model, batch, [Hook(site="blocks.0.attn.hook_attn_scores", fn=lambda s, h: None)])
    torch.testing.assert_close(unchanged, model.forward(batch), atol=1e-5, rtol=1e-5)


def test_vision_tower_scores(model, single):
    sites = ["vision.blocks.0.attn.hook_attn_scores", "vision.blocks.0.attn.hook_pattern"]
    _, cache = run_with_cache(model, single, sites=sites)
    scores, pattern = cache[sites[0]], cache[sites[1]]
    assert scores.shape == pattern.shape
    torch.testing.assert_close(torch.softmax(scores, -1, dtype=torch.float32).to(pattern.dtype), pattern)
