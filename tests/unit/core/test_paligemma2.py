"""PaliGemma-2 (a Gemma-2 language model: sandwich norms, soft-capped attention logits)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmlens import HookedVLM
from vlmlens.adapters import get_adapter
from vlmlens.errors import SiteCheckError
from vlmlens.ops import Ablate, run_with_cache, run_with_interventions
from vlmlens.testing import tiny_images, tiny_paligemma2


@pytest.fixture(scope="module")
def pg2():
    hf, processor = tiny_paligemma2()
    reference, _ = tiny_paligemma2()
    return HookedVLM.from_hf(hf, processor), reference


@pytest.fixture(scope="module")
def pg2_batch(pg2):
    return pg2[0].prepare(tiny_images(2, seed=4), ["Is there a cat in the image?", "Is there a dog?"])


def test_adapter_variant_and_exact_parity(pg2, pg2_batch):
    model, reference = pg2
    assert model.adapter.text_model_type == "gemma2"
    assert model.adapter.text.block.attn_out_norm == "post_attention_layernorm"
    with torch.no_grad():
        assert torch.equal(model.forward(pg2_batch), reference(**pg2_batch.inputs).logits)


def test_softcap_is_applied_in_the_pattern(pg2, pg2_batch):
    model, _ = pg2
    q, k = [], []
    _, cache = run_with_cache(model, pg2_batch, sites=["text.blocks.0.attn.hook_q", "text.blocks.0.attn.hook_k",
                                                       "text.blocks.0.attn.hook_pattern"])
    q, k = cache["q", 0].transpose(1, 2), cache["k", 0].transpose(1, 2)
    groups = model.n_heads // model.n_kv_heads
    k = k.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) * model.text_config.query_pre_attn_scalar**-0.5
    capped = torch.tanh(scores / 0.02) * 0.02
    pattern = cache["pattern", 0]
    # rows of the prefix (bidirectional, no padding in sample 0) are a plain softmax of the capped scores
    prefix = pg2_batch.layout.prefix[0]
    rows = slice(prefix[0], prefix[1])
    want = capped[0, :, rows, rows].softmax(-1)
    assert (pattern[0, :, rows, rows] - want).abs().max() <= 1e-5
    assert (pattern[0, :, rows, rows] - scores[0, :, rows, rows].softmax(-1)).abs().max() > 1e-4


def test_residual_identities_with_sandwich_norms(pg2, pg2_batch):
    model, _ = pg2
    _, c = run_with_cache(model, pg2_batch, sites=lambda s: s.tower.value == "text" and s.layer == 1)
    assert (c["resid_mid", 1] - (c["resid_pre", 1] + c["attn_out", 1])).abs().max() <= 1e-5
    assert (c["resid_post", 1] - (c["resid_mid", 1] + c["mlp_out", 1])).abs().max() <= 1e-5


def test_resid_mid_edit_equals_hand_edit(pg2, pg2_batch):
    model, _ = pg2
    got = run_with_interventions(model, pg2_batch, [Ablate(site="text.blocks.0.hook_resid_mid", dims=(0, 3))])
    block = model.module("model.language_model.layers.0")
    seen = {}

    def capture(module, args):  # input of the pre-feed-forward norm = resid_mid
        h = args[0].clone()
        h[..., [0, 3]] = 0
        seen["mid"] = h
        return (h,)

    def add_back(module, args, out):  # block output = edited mid + post_ff_norm(mlp(pre_ff_norm(edited mid)))
        return seen["mid"] + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(seen["mid"])))

    handles = [block.pre_feedforward_layernorm.register_forward_pre_hook(capture), block.register_forward_hook(add_back)]
    try:
        want = model.forward(pg2_batch)
    finally:
        for h in handles:
            h.remove()
    assert (got - want).abs().max() <= 1e-5


def test_base_adapter_on_gemma2_is_caught_at_load():
    hf, processor = tiny_paligemma2()
    wrong = dataclasses.replace(get_adapter("PaliGemmaForConditionalGeneration"), text_model_type=None)
    wrong = dataclasses.replace(wrong, text=get_adapter("PaliGemmaForConditionalGeneration").text)
    with pytest.raises(SiteCheckError, match="hook_resid_mid != hook_resid_pre \\+ hook_attn_out"):
        HookedVLM.from_hf(hf, processor, adapter=wrong)
    HookedVLM.from_hf(hf, processor)  # the failed wrap left the model unwrapped
