"""Direct logit attribution and the logit lens: parts add up, and match a hand-written reference.

The norms' weights are randomised (tiny models start them at 1 / 0), so a wrong gain
(``w`` vs ``1 + w``) or a wrong scale cannot pass.
"""

from __future__ import annotations

import pytest
import torch

from vlmlens import HookedVLM
from vlmlens.errors import InputError, SiteNotFoundError
from vlmlens.ops import ActivationCache, logit_lens, neuron_logit_attrs, run_with_cache
from vlmlens.testing import tiny_hf, tiny_images, tiny_paligemma2

TEXT = "model.language_model"
YES, NO = 5, 7


def _randomise_norms(hf: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.startswith(TEXT) and "norm" in name and name.endswith("weight"):
                param.copy_(param + 0.5 * torch.randn(param.shape, generator=gen))


def _pair(family: str):
    """A HookedVLM and an identical plain HF model, both with randomised text norms."""
    if family == "paligemma2":
        (hf, processor), (ref, _) = tiny_paligemma2(), tiny_paligemma2()
    else:
        (hf, processor), (ref, _) = tiny_hf(family), tiny_hf(family)
    for m in (hf, ref):
        _randomise_norms(m)
    return HookedVLM.from_hf(hf, processor), ref


@pytest.fixture(scope="module", params=["llava", "paligemma", "qwen2_vl", "paligemma2"])
def setup(request):
    model, ref = _pair(request.param)
    batch = model.prepare(tiny_images(2, seed=5), ["Is there a cat in the image?", "Is there a dog?"])
    sites = lambda s: s.tower.value == "text"
    logits, cache = run_with_cache(model, batch, sites=sites, positions="all")
    return request.param, model, ref, batch, logits, cache


def _pre_softcap(family, model, logits):
    cap = getattr(model.text_config, "final_logit_softcapping", None)
    return torch.atanh(logits / cap) * cap if family == "paligemma2" and cap else logits


def test_decomposition_adds_up_to_the_residual_and_the_logits(setup):
    family, model, _, _, logits, cache = setup
    n = model.n_layers
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed"] + [f"{l}_{p}" for l in range(n) for p in ("attn_out", "mlp_out")]
    final = cache["resid_post", n - 1]
    torch.testing.assert_close(parts.sum(0), final, atol=1e-5, rtol=1e-5)
    normed = cache.decompose_resid(apply_ln=True).sum(0)
    torch.testing.assert_close(normed, cache["text.ln_final.hook_normalized"].float(), atol=1e-5, rtol=1e-5)
    attrs = cache.logit_attrs(parts, tokens=YES, incorrect_tokens=NO)  # part batch pos
    target = _pre_softcap(family, model, logits)
    torch.testing.assert_close(attrs.sum(0), target[..., YES] - target[..., NO], atol=2e-4, rtol=1e-4)
    # Before layer 1 (and before its MLP): the parts add up to resid_pre / resid_mid there.
    torch.testing.assert_close(cache.decompose_resid(1).sum(0), cache["resid_pre", 1], atol=1e-5, rtol=1e-5)
    mid, mid_labels = cache.decompose_resid(1, mlp_input=True, return_labels=True)
    assert mid_labels[-1] == "1_attn_out"
    torch.testing.assert_close(mid.sum(0), cache["resid_mid", 1], atol=1e-5, rtol=1e-5)
    assert cache.decompose_resid(mode="mlp", incl_embeds=False).shape[0] == n


def test_heads_and_neurons_add_up_to_their_branch(setup):
    _, model, _, _, _, cache = setup
    n = model.n_layers
    heads, labels = cache.stack_head_results(incl_remainder=True, return_labels=True)
    assert labels[:2] == ["L0H0", "L0H1"] and labels[-1] == "bias"
    per_layer = heads[:-1].unflatten(0, (n, model.n_heads)).sum(1)
    per_layer[0] += heads[-1]  # the remainder (o_proj bias) is summed over layers; the tiny models have none
    torch.testing.assert_close(per_layer, cache.stack("attn_out"), atol=1e-5, rtol=1e-5)
    for layer in range(n):
        neurons = neuron_logit_attrs(model, cache, layer, YES, NO)  # batch pos neuron
        branch = cache.logit_attrs(cache["mlp_out", layer][None], YES, NO)[0]
        torch.testing.assert_close(neurons.sum(-1), branch, atol=1e-4, rtol=1e-4)


def _hand_reference(family, ref, batch, layer):
    """Per-head and per-neuron DLA of ``layer`` at the last position, in plain torch on the HF model."""
    lm = ref.get_submodule(TEXT)
    block = lm.layers[layer]
    got = {}
    hooks = [lm.norm.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0])),
             block.self_attn.o_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("z", a[0])),
             block.mlp.down_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("post", a[0]))]
    with torch.no_grad():
        ref(**batch.inputs)
    for h in hooks:
        h.remove()
    gemma = family in ("paligemma", "paligemma2")

    def gain(norm):
        return norm.weight.float() + (1.0 if gemma else 0.0)

    def inv_rms(x, norm):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    x = got["x"][:, -1]
    direction = (ref.lm_head.weight[YES] - ref.lm_head.weight[NO]) * gain(lm.norm)
    read = direction * inv_rms(x, lm.norm)  # batch d_model
    z = got["z"][:, -1]
    w_o = block.self_attn.o_proj.weight
    d_head = w_o.shape[1] // ref.config.text_config.num_attention_heads
    results = torch.stack([z[:, h * d_head:(h + 1) * d_head] @ w_o[:, h * d_head:(h + 1) * d_head].T
                           for h in range(w_o.shape[1] // d_head)], 1)  # batch head d
    post = got["post"][:, -1]
    w_down = block.mlp.down_proj.weight
    neurons = post[:, :, None] * w_down.T[None]  # batch neuron d
    if family == "paligemma2":  # the sandwich norms, frozen at the branch outputs
        norm = block.post_attention_layernorm
        results = results * inv_rms(results.sum(1), norm)[:, None] * gain(norm)
        norm = block.post_feedforward_layernorm
        neurons = neurons * inv_rms(neurons.sum(1), norm)[:, None] * gain(norm)
    return (results * read[:, None]).sum(-1), (neurons * read[:, None]).sum(-1)


def test_head_and_neuron_dla_match_a_hand_written_reference(setup):
    family, model, ref, batch, _, cache = setup
    layer = model.n_layers - 1
    heads_ref, neurons_ref = _hand_reference(family, ref, batch, layer)
    heads = cache.logit_attrs(cache.stack_head_results(), YES, NO)[:, :, -1]  # part batch
    torch.testing.assert_close(heads[-model.n_heads:].T, heads_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(neuron_logit_attrs(model, cache, layer, YES, NO)[:, -1], neurons_ref,
                               atol=1e-5, rtol=1e-4)


def test_accumulated_resid_follows_transformer_lens(setup):
    _, model, _, _, _, cache = setup
    n = model.n_layers
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    assert torch.equal(stack[-1], cache["resid_post", n - 1])
    assert cache.accumulated_resid(-1, return_labels=True)[1] == labels  # -1 is the final residual, as TL
    _, labels = cache.accumulated_resid(1, incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre"]
    assert cache.accumulated_resid(0, mlp_input=True, return_labels=True)[1] == ["0_pre", "0_mid"]
    # apply_ln at the final residual applies the real norm to each entry (a logit lens, as TL 4).
    lens = cache.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(lens[-1], cache["text.ln_final.hook_normalized"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lens[0], model.final_norm(cache["resid_pre", 0]), atol=1e-6, rtol=1e-6)
    # Before a layer it freezes that layer's norm: the last entry (resid_pre there) becomes its norm's output.
    frozen = cache.accumulated_resid(1, apply_ln=True)
    attn_norm = model.block_module("text", 1, "attn_norm")
    torch.testing.assert_close(frozen[-1], attn_norm(cache["resid_pre", 1]).float(), atol=1e-5, rtol=1e-5)
    assert cache.decompose_resid(-1, return_labels=True)[1] == cache.decompose_resid(return_labels=True)[1]


def test_token_directions_per_sample_and_last_position_cache(setup):
    family, model, _, batch, logits, _ = setup
    _, last = run_with_cache(model, batch, sites=lambda s: s.tower.value == "text", positions="last")
    parts = last.decompose_resid()  # part batch d
    yes, no = torch.tensor([YES, 3]), torch.tensor([NO, 9])  # a different pair per sample
    attrs = last.logit_attrs(parts, yes, no).sum(0)
    target = _pre_softcap(family, model, logits)[:, -1]
    expected = target[torch.arange(2), yes] - target[torch.arange(2), no]
    torch.testing.assert_close(attrs, expected, atol=2e-4, rtol=1e-4)


def test_logit_lens_final_layer_is_the_model_output_and_image_grid(setup):
    family, model, _, batch, logits, _ = setup
    n = model.n_layers
    lens = logit_lens(model, batch, positions="last", tokens=[YES, NO])
    assert lens.logits.shape == (n + 1, 2, 1, 2) and lens.layers == tuple(range(n + 1))
    final = logits[:, -1][:, [YES, NO]]
    if family != "paligemma2":  # the lens reads logits before Gemma-2's soft-cap
        torch.testing.assert_close(lens.logits[-1, :, 0], final.float(), atol=1e-5, rtol=1e-5)
    image = logit_lens(model, batch, positions="image", top_k=3, layers=[0, n])
    rows, cols = batch.layout.images[0][0].grid
    assert image.grid == (rows, cols) and image.positions[0].endswith("img(0,0)")
    assert image.patch_grid().shape == (2, 2, rows, cols)
    assert len(image.tokens(model, n)) == rows * cols and len(image.tokens(model, n)[0]) == 3
    top = image.logits[..., 0]
    assert bool((image.logits[..., 1] <= top).all())


def test_clear_errors(setup):
    _, model, _, batch, _, cache = setup
    _, partial = run_with_cache(model, batch, sites=["text.blocks.0.hook_resid_pre"])
    with pytest.raises(SiteNotFoundError, match="attn_out"):
        partial.decompose_resid()
    with pytest.raises(InputError, match="needs the model"):
        ActivationCache(dict(cache.activations)).decompose_resid()
    with pytest.raises(InputError, match="mode"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(InputError, match="token ids"):
        cache.logit_attrs(cache.decompose_resid(), tokens=10**9)
    with pytest.raises(InputError, match="out of range"):
        logit_lens(model, batch, layers=[model.n_layers + 1])
    with pytest.raises(InputError, match="not over one image"):
        logit_lens(model, batch, positions="last").patch_grid()
