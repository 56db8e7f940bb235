"""Golden tests: each intervention equals the same edit written by hand with plain torch hooks."""

import contextlib

import pytest
import torch

from vlmlens.errors import InputError, InterventionError
from vlmlens.ops import (
    Ablate,
    BlockAttention,
    MaskPixels,
    MaskTokens,
    Patch,
    Steer,
    mean_activation,
    run_with_cache,
    run_with_interventions,
    sweep,
    top_patches,
)
from vlmlens.testing import tiny_images, tiny_vlm

ATOL = 1e-6


@contextlib.contextmanager
def hand_hook(module, fn, pre=False):
    handle = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def layer(model, i):
    return model.module(f"model.language_model.layers.{i}")


def plain(model, batch):
    return model.forward(batch)


def test_zero_ablate_heads_of_z(model, batch):
    got = run_with_interventions(model, batch, [Ablate(site="text.blocks.1.attn.hook_z", heads=(0, 2))])
    attn = layer(model, 1).self_attn
    d = attn.head_dim

    def zero_heads(module, args):
        z = args[0].clone()
        for h in (0, 2):
            z[..., h * d : (h + 1) * d] = 0
        return (z,)

    with hand_hook(attn.o_proj, zero_heads, pre=True):
        want = plain(model, batch)
    assert (got - want).abs().max() <= ATOL
    assert (got - plain(model, batch)).abs().max() > 1e-4


def test_mean_ablate_neurons_at_last_position(model, batch):
    mean = mean_activation(model, [batch], "text.blocks.0.mlp.hook_post")
    _, cache = run_with_cache(model, batch, sites=["text.blocks.0.mlp.hook_post"])
    last = torch.stack([cache["mlp_post", 0][b, p] for b, p in enumerate(batch.layout.last_prompt)]).mean(0)
    assert torch.allclose(mean.last, last, atol=1e-6)
    neurons = (3, 17)
    got = run_with_interventions(
        model, batch, [Ablate(site="text.blocks.0.mlp.hook_post", mode="mean", mean=mean, dims=neurons, positions="last")])

    def edit(module, args):
        x = args[0].clone()
        for b, pos in enumerate(batch.layout.last_prompt):
            x[b, pos, list(neurons)] = mean.last[list(neurons)]
        return (x,)

    with hand_hook(layer(model, 0).mlp.down_proj, edit, pre=True):
        want = plain(model, batch)
    assert (got - want).abs().max() <= ATOL


def test_patch_resid_from_source_run(model, batch):
    source = model.prepare(tiny_images(2, seed=9), ["Is there a cat in the image?", "Is there a dog?"])
    _, cache = run_with_cache(model, source, sites=["text.blocks.0.hook_resid_post"])
    src = cache["resid_post", 0]
    got = run_with_interventions(
        model, batch, [Patch(site="text.blocks.0.hook_resid_post", source=src, positions="image")])
    image = batch.layout.mask("image")

    def edit(module, args, output):
        return torch.where(image[..., None], src, output)

    with hand_hook(layer(model, 0), edit):
        want = plain(model, batch)
    assert (got - want).abs().max() <= ATOL


def test_steer_resid_pre(model, batch):
    vector = torch.linspace(-1, 1, model.d_model)
    got = run_with_interventions(model, batch, [Steer(site="text.blocks.1.hook_resid_pre", vector=vector, scale=3.0)])
    with hand_hook(layer(model, 1), lambda m, a: (a[0] + 3.0 * vector, *a[1:]), pre=True):
        want = plain(model, batch)
    assert (got - want).abs().max() <= ATOL


def test_mask_pixels(model, batch):
    patches = [[(0, 0), (1, 1)], [(1, 0)]]
    got = run_with_interventions(model, batch, [MaskPixels(patches=patches)])
    pixels = batch.inputs["pixel_values"].clone()
    if pixels.dim() == 4:
        p = pixels.shape[-1] // batch.layout.grid(0)[1]
        for b, plist in enumerate(patches):
            for r, c in plist:
                pixels[b, :, r * p : (r + 1) * p, c * p : (c + 1) * p] = 0
    else:  # Qwen2-VL: 4 raw patches per merged token, images in order
        per_image = pixels.shape[0] // len(patches)
        for b, plist in enumerate(patches):
            for r, c in plist:
                token = r * batch.layout.grid(b)[1] + c
                pixels[b * per_image + 4 * token : b * per_image + 4 * token + 4] = 0
    want = model.forward({**batch.inputs, "pixel_values": pixels})
    assert (got - want).abs().max() <= ATOL
    assert (got - plain(model, batch)).abs().max() > 1e-5


def test_mask_tokens_zero(model, batch):
    patches = [[(0, 1)], [(1, 1), (0, 0)]]
    got = run_with_interventions(model, batch, [MaskTokens(patches=patches)])
    positions = [[batch.layout.patch_position(b, r, c) for r, c in plist] for b, plist in enumerate(patches)]

    def edit(module, args, kwargs):
        x = kwargs["inputs_embeds"].clone()
        for b, pos in enumerate(positions):
            x[b, pos] = 0
        return args, {**kwargs, "inputs_embeds": x}

    handle = model.module("model.language_model").register_forward_pre_hook(edit, with_kwargs=True)
    try:
        want = plain(model, batch)
    finally:
        handle.remove()
    assert (got - want).abs().max() <= ATOL


def test_block_attention_equals_minus_inf_mask(model, single):
    patches = [[(0, 0), (0, 1)]]
    got = run_with_interventions(model, single, [BlockAttention(layers=(0, 1), patches=patches)])
    keys = [single.layout.patch_position(0, r, c) for r, c in patches[0]]
    last = single.layout.last_prompt[0]
    hooks = []
    for i in (0, 1):
        # By hand: zero the blocked keys in the last query row and renormalise it.
        def edit(module, args, output):
            pattern = output.clone()
            row = pattern[0, :, last].clone()
            row[:, keys] = 0
            pattern[0, :, last] = row / row.sum(-1, keepdim=True)
            return pattern

        hooks.append(model.module(model.hook_path(f"text.blocks.{i}.attn.hook_pattern")).register_forward_hook(edit))
    try:
        want = plain(model, single)
    finally:
        for h in hooks:
            h.remove()
    assert (got - want).abs().max() <= ATOL
    # -inf before softmax renormalises exactly like this: check one row numerically
    scores = torch.randn(7)
    blocked = scores.clone()
    blocked[[1, 2]] = float("-inf")
    row = scores.softmax(-1)
    row[[1, 2]] = 0
    assert torch.allclose(blocked.softmax(-1), row / row.sum())


def test_noop_identities(model, single):
    clean = plain(model, single)
    site = "text.blocks.1.hook_resid_mid"
    mean = mean_activation(model, single, site)
    # one sample: its last position's role mean is its own last activation
    got = run_with_interventions(model, single, [Ablate(site=site, mode="mean", mean=mean, positions="last")])
    assert (got - clean).abs().max() <= ATOL
    _, cache = run_with_cache(model, single, sites=[site])
    assert (run_with_interventions(model, single, [Patch(site=site, source=cache[site])]) - clean).abs().max() <= ATOL


def test_zero_all_heads_equals_zero_attn_out(model, batch):
    heads = tuple(range(model.n_heads))
    a = run_with_interventions(model, batch, [Ablate(site="text.blocks.0.attn.hook_result", heads=heads)])
    b = run_with_interventions(model, batch, [Ablate(site="text.blocks.0.hook_attn_out")])
    assert (a - b).abs().max() <= 1e-5


def test_sweep_equals_one_by_one(model, batch):
    conditions = [[]]
    for i in range(5):
        conditions.append([Ablate(site=f"text.blocks.{i % 2}.attn.hook_z", heads=(i % model.n_heads,))])
        conditions.append([Steer(site="text.blocks.0.hook_resid_post", vector=torch.full((model.d_model,), 0.1 * i),
                                 positions="last")])
        conditions.append([MaskTokens(patches=[[(0, i % 2)], [(1, 0)]])])
    assert len(conditions) == 16
    stacked = sweep(model, batch, conditions, chunk_size=6)
    for i, condition in enumerate(conditions):
        one = run_with_interventions(model, batch, condition)
        assert (stacked[i] - one).abs().max() <= 1e-5, i


def test_exception_leaves_no_hook(family, single):
    model = tiny_vlm(family)
    fresh = tiny_vlm(family)
    bad = Steer(site="text.blocks.0.hook_resid_post", vector=torch.ones(3))  # wrong width: raises midway
    with pytest.raises(InterventionError, match="does not broadcast"):
        run_with_interventions(model, single, [Ablate(site="text.blocks.0.hook_attn_out"), bad])
    assert torch.equal(model.forward(single), fresh.forward(single))


def test_clear_errors(model, batch):
    with pytest.raises(InterventionError, match=r"neuron index 9999 is out of range .* \(valid 0\.\.127\)"):
        run_with_interventions(model, batch, [Ablate(site="text.blocks.0.mlp.hook_post", dims=(9999,))])
    with pytest.raises(InterventionError, match=r"patch \(9, 0\) of sample 0 is outside image 0's"):
        run_with_interventions(model, batch, [MaskPixels(patches=[[(9, 0)], []])])
    padded = model.prepare(tiny_images(2), ["Is there a cat in the image? yes yes yes", "Is there a dog?"])
    with pytest.raises(InputError, match="position 0 of sample 1 is padding"):
        run_with_interventions(model, padded, [Ablate(site="text.blocks.0.hook_resid_post", positions=[0])])
    with pytest.raises(InterventionError, match="mode='mean' needs mean"):
        Ablate(site="text.blocks.0.hook_resid_post", mode="mean")


def test_generate_keeps_edit_active(model, single):
    clean = model.generate(single, max_new_tokens=3)
    edited = model.generate(single, max_new_tokens=3,
                            interventions=[Steer(site="text.blocks.1.hook_resid_post",
                                                 vector=torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)),
                                                 scale=50.0)])
    assert edited.token_ids.shape == clean.token_ids.shape
    assert not torch.equal(edited.scores, clean.scores)


def test_top_patches():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    assert top_patches(scores, 0.5) == [(0, 1), (1, 0)]
    assert top_patches(scores, 0.25, largest=False) == [(0, 0)]


def test_generate_with_patch_applies_at_prompt_step(model, single):
    _, cache = run_with_cache(model, single, sites=["text.blocks.0.hook_resid_post"])
    same = model.generate(single, max_new_tokens=3,
                          interventions=[Patch(site="text.blocks.0.hook_resid_post", source=cache["resid_post", 0])])
    clean = model.generate(single, max_new_tokens=3)
    assert torch.equal(same.token_ids, clean.token_ids)
    assert torch.allclose(same.scores, clean.scores, atol=1e-5)


def test_sweep_reduces_each_condition_on_the_device(model, batch):
    conditions = [[], [Ablate(site="text.blocks.0.attn.hook_z", heads=(1,))], [Ablate(site="text.blocks.1.hook_mlp_out")]]

    def last_logit_sum(logits, b):
        return logits[:, -1].sum(-1)

    full = sweep(model, batch, conditions, chunk_size=2)
    reduced = sweep(model, batch, conditions, chunk_size=2, reduce=last_logit_sum)
    assert reduced.shape == (3, len(batch))
    assert torch.allclose(reduced, torch.stack([last_logit_sum(one, batch) for one in full]), atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_position_logits_equal_the_full_logits_there(model, padding_side):
    """forward/sweep(last=True) unembed only each sample's last prompt position (HF's logits_to_keep)."""
    batch = model.prepare(tiny_images(2, seed=1), ["Is there a cat in the image?", "Is there a dog?"],
                          padding_side=padding_side)
    last = torch.as_tensor(batch.layout.last_prompt)
    rows = torch.arange(len(batch))
    full = model.forward(batch)
    if padding_side == "right":
        assert last[0] != last[1]  # two different positions to keep
    assert torch.allclose(model.forward(batch, last=True), full[rows, last], atol=1e-5)
    conditions = [[], [Ablate(site="text.blocks.1.hook_mlp_out")], [Ablate(site="text.blocks.0.attn.hook_z", heads=(0,))]]
    stacked = sweep(model, batch, conditions, chunk_size=2, last=True)
    assert stacked.shape == (3, 2, full.shape[-1])
    for got, want in zip(stacked, sweep(model, batch, conditions, chunk_size=3)):
        assert torch.allclose(got, want[rows, last], atol=1e-5)
    assert not torch.allclose(stacked[1], stacked[0], atol=1e-4)  # the ablation is applied in the stacked copies
    cached, _ = run_with_cache(model, batch, sites=["text.blocks.0.hook_resid_post"], last=True)
    assert torch.allclose(cached, full[rows, last], atol=1e-5)
    with pytest.raises(InputError, match="need a Batch"):
        model.forward(dict(batch.inputs), last=True)
    _, pick = model.last_logits(batch)
    with pytest.raises(InputError, match="does not support last-position logits"):
        pick(full)  # what a model class that ignores logits_to_keep would return
    with pytest.raises(InputError, match="not both"):
        sweep(model, batch, conditions, last=True, reduce=lambda logits, b: logits.sum())
