"""Golden tests: every intervention during cached generation equals the same edit written
by hand in plain torch on a no-cache forward over the whole generated sequence.

The reference is teacher-forced: one ``use_cache=False`` forward of prompt + generated
tokens with a plain PyTorch hook applying the edit at every position the definition
covers, whose log-probabilities must match ``HookedVLM.generate``'s scores (fp32, atol
1e-4) and whose greedy choices must be the generated tokens.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from vlmlens.context import Call
from vlmlens.ops import (
    Ablate,
    AtSteps,
    BlockAttention,
    MaskPixels,
    MaskTokens,
    Patch,
    Steer,
    mean_activation,
    run_with_cache,
)
from vlmlens.ops.pixels import pixel_mask
from vlmlens.ops.positions import ImagePatches
from vlmlens.testing import tiny_images

TOL = 1e-4
NEW = 4


@pytest.fixture(scope="module")
def gen_batch(model):
    return model.prepare(tiny_images(2, seed=3), ["Is there a cat in the image?", "Is there a dog?"])


def layer(model, i):
    return model.module(f"model.language_model.layers.{i}")


@contextlib.contextmanager
def hooks(*registrations):
    handles = list(registrations)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def full_inputs(batch, new_ids, copies=1, pixels=None):
    given = dict(batch.inputs)
    if pixels is not None:
        given["pixel_values"] = pixels
    inputs = {k: v.repeat_interleave(copies, 0) if k not in ("pixel_values",) or v.dim() == 4 else v
              for k, v in given.items()}
    if copies > 1 and "image_grid_thw" in inputs:  # Qwen2-VL: flat patches, repeat each sample's run
        thw = batch.inputs["image_grid_thw"]
        runs = given["pixel_values"].split([int(t.prod()) for t in thw])
        inputs["pixel_values"] = torch.cat([r for r in runs for _ in range(copies)])
    ones = torch.ones_like(new_ids)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], new_ids], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], ones], 1)
    if "token_type_ids" in inputs:
        inputs["token_type_ids"] = torch.cat([inputs["token_type_ids"], ones], 1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], 0 * ones], 1)
    return inputs


def check(model, batch, gen, copies=1, pixels=None, greedy=True):
    """Teacher-force the generated tokens without a cache (the caller's hand hooks active)."""
    S = batch.inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model.hf_model(**full_inputs(batch, gen.token_ids, copies, pixels), use_cache=False).logits
    logprobs = logits[:, S - 1 : -1].float().log_softmax(-1)
    want = logprobs.gather(-1, gen.token_ids[..., None])[..., 0]
    diff = (want - gen.scores).abs().max().item()
    assert diff <= TOL, diff
    if greedy:  # after an end-of-sequence token, generate pads instead of choosing
        eos = torch.as_tensor(model.hf_model.generation_config.eos_token_id).flatten()
        done = torch.isin(gen.token_ids, eos).cumsum(1) - torch.isin(gen.token_ids, eos).long() > 0
        assert torch.equal(logprobs.argmax(-1)[~done], gen.token_ids[~done])
    return diff


def edited_differs(model, batch, gen):
    clean = model.generate(batch, max_new_tokens=NEW)
    assert not torch.allclose(clean.scores, gen.scores, atol=1e-5), "the edit changed nothing: a vacuous test"


def test_no_edit_matches_no_cache_reference(model, gen_batch):
    check(model, gen_batch, model.generate(gen_batch, max_new_tokens=NEW))


def test_ablate_k_and_v_heads_at_last_prompt_position_persist_in_cache(model, gen_batch):
    # Zeroing kv head 0 at the prompt's last position; rope(0) = 0, so a k_proj/v_proj hook is exact.
    edits = [Ablate(site=f"text.blocks.{p}.attn.hook_{x}", heads=(0,), positions="last") for p in (0, 1) for x in "kv"]
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=edits)
    edited_differs(model, gen_batch, gen)
    last = gen_batch.layout.last_prompt

    def zero_head0(module, args, out):
        out = out.clone()
        d = out.shape[-1] // model.n_kv_heads
        for b, p in enumerate(last):
            out[b, p, :d] = 0
        return out

    attns = [layer(model, i).self_attn for i in (0, 1)]
    with hooks(*[a.k_proj.register_forward_hook(zero_head0) for a in attns],
               *[a.v_proj.register_forward_hook(zero_head0) for a in attns]):
        check(model, gen_batch, gen)


def test_steer_v_at_image_positions(model, gen_batch):
    vector = torch.randn(model.n_kv_heads, model.d_model // model.n_heads, generator=torch.Generator().manual_seed(1))
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        Steer(site="text.blocks.0.attn.hook_v", vector=vector, scale=3.0, positions="image")])
    edited_differs(model, gen_batch, gen)
    image = gen_batch.layout.mask("image")

    def add(module, args, out):
        out = out.clone()
        S = image.shape[1]
        out[:, :S][image] += 3.0 * vector.flatten()
        return out

    with hooks(layer(model, 0).self_attn.v_proj.register_forward_hook(add)):
        check(model, gen_batch, gen)


def test_ablate_z_heads_everywhere(model, gen_batch):
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        Ablate(site="text.blocks.1.attn.hook_z", heads=(0, 2))])
    edited_differs(model, gen_batch, gen)
    d = model.d_model // model.n_heads

    def zero(module, args):
        z = args[0].clone()
        for h in (0, 2):
            z[..., h * d : (h + 1) * d] = 0
        return (z,)

    with hooks(layer(model, 1).self_attn.o_proj.register_forward_pre_hook(zero)):
        check(model, gen_batch, gen)


def test_ablate_result_head(model, gen_batch):
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        Ablate(site="text.blocks.0.attn.hook_result", heads=(1,))])
    edited_differs(model, gen_batch, gen)
    d = model.d_model // model.n_heads

    def zero(module, args):
        z = args[0].clone()
        z[..., d : 2 * d] = 0
        return (z,)

    with hooks(layer(model, 0).self_attn.o_proj.register_forward_pre_hook(zero)):
        check(model, gen_batch, gen)


def _replace_prompt(values, mask):
    """A block-output hook writing ``values`` (batch prompt d) where ``mask`` (batch prompt) is set."""

    def hook(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        S = mask.shape[1]
        h[:, :S][mask] = values[mask].to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    return hook


def test_patch_resid_from_source_covers_prompt_only(model, gen_batch):
    source_batch = model.prepare(tiny_images(2, seed=11), ["Is there a cat in the image?", "Is there a dog?"])
    _, cache = run_with_cache(model, source_batch, sites=["text.blocks.0.hook_resid_post"])
    source = cache["resid_post", 0]
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        Patch(site="text.blocks.0.hook_resid_post", source=source)])
    edited_differs(model, gen_batch, gen)
    real = ~gen_batch.layout.padding
    with hooks(layer(model, 0).register_forward_hook(_replace_prompt(source, real))):
        check(model, gen_batch, gen)


def test_patch_pattern_at_last_position(model, gen_batch):
    _, cache = run_with_cache(model, gen_batch, sites=["text.blocks.1.attn.hook_pattern"])
    source = torch.zeros_like(cache["pattern", 1])  # all attention on each sample's first image token
    for b, spans in enumerate(gen_batch.layout.images):
        source[b, :, :, spans[0].start] = 1.0
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        Patch(site="text.blocks.1.attn.hook_pattern", source=source, positions="last")])
    edited_differs(model, gen_batch, gen)
    attn = layer(model, 1).self_attn
    n, kv, d = model.n_heads, model.n_kv_heads, model.d_model // model.n_heads
    seen = {}

    def keep_v(module, args, out):
        seen["v"] = out

    def rewrite(module, args):
        z = args[0].clone()
        v = seen["v"].unflatten(-1, (kv, d)).repeat_interleave(n // kv, 2)  # batch seq head d
        S = source.shape[-1]
        for b, p in enumerate(gen_batch.layout.last_prompt):
            row = source[b, :, p, :]  # head k
            z[b, p] = torch.einsum("hk,khd->hd", row, v[b, :S]).flatten()
        return (z,)

    with hooks(attn.v_proj.register_forward_hook(keep_v), attn.o_proj.register_forward_pre_hook(rewrite)):
        check(model, gen_batch, gen)


def test_mean_ablate_by_role_and_per_unit(model, gen_batch):
    site = "text.blocks.0.hook_resid_post"
    role = mean_activation(model, [gen_batch, model.prepare(tiny_images(1, seed=5), ["Is there a bus?"])], site)
    unit = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        Ablate(site=site, mode="mean", mean=role),
        Ablate(site="text.blocks.1.hook_resid_post", mode="mean", mean=unit, dims=(0, 5))])
    edited_differs(model, gen_batch, gen)
    real = ~gen_batch.layout.padding
    expanded = role.expand(model.site(site), gen_batch.layout)

    def unit_hook(module, args, out):
        h = out[0].clone() if isinstance(out, tuple) else out.clone()
        h[..., [0, 5]] = unit[[0, 5]]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with hooks(layer(model, 0).register_forward_hook(_replace_prompt(expanded, real)),
               layer(model, 1).register_forward_hook(unit_hook)):
        check(model, gen_batch, gen)


def _embeds_hook(mask, fill, copies):
    def hook(module, args, kwargs):
        x = kwargs["inputs_embeds"].clone()
        m = mask.repeat_interleave(copies, 0)
        x[:, : m.shape[1]][m] = fill
        return args, {**kwargs, "inputs_embeds": x}

    return hook


def test_mask_tokens_with_two_return_sequences(model, gen_batch):
    patches = [[(0, 0), (1, 1)], [(0, 1)]]
    torch.manual_seed(0)
    gen = model.generate(gen_batch, max_new_tokens=NEW, do_sample=True, num_return_sequences=2, seed=0,
                         interventions=[MaskTokens(patches=patches)])
    assert gen.token_ids.shape[0] == 4
    mask = torch.zeros(2, gen_batch.layout.seq_len, dtype=torch.bool)
    for b, plist in enumerate(patches):
        for r, c in plist:
            mask[b, gen_batch.layout.patch_position(b, r, c)] = True
    lm = model.module("model.language_model")
    with hooks(lm.register_forward_pre_hook(_embeds_hook(mask, 0.0, 2), with_kwargs=True)):
        check(model, gen_batch, gen, copies=2, greedy=False)


def test_block_attention_for_every_query(model, gen_batch):
    patches = [[(0, 0), (0, 1), (1, 0)], [(1, 1)]]
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[
        BlockAttention(layers=(0, 1), patches=patches, queries=None)])
    edited_differs(model, gen_batch, gen)
    keys = torch.zeros(2, gen_batch.layout.seq_len, dtype=torch.bool)
    for b, plist in enumerate(patches):
        for r, c in plist:
            keys[b, gen_batch.layout.patch_position(b, r, c)] = True

    def block(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()
        cols = torch.nn.functional.pad(keys, (0, mask.shape[-1] - keys.shape[1]))
        mask = mask.masked_fill(cols[:, None, None, :], float("-inf"))
        return args, {**kwargs, "attention_mask": mask}

    with hooks(*[layer(model, i).self_attn.register_forward_pre_hook(block, with_kwargs=True) for i in (0, 1)]):
        check(model, gen_batch, gen)


def test_mask_pixels(model, gen_batch):
    patches = [[(0, 0), (1, 1)], [(0, 1)]]
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[MaskPixels(patches=patches)])
    edited_differs(model, gen_batch, gen)
    pixels = gen_batch.inputs["pixel_values"]
    grey = pixels.masked_fill(pixel_mask(model.adapter, gen_batch.layout, patches, 0, pixels, Call(), None), 0)
    assert not torch.equal(grey, pixels)
    check(model, gen_batch, gen, pixels=grey)


def test_image_edits_with_two_return_sequences(model, gen_batch):
    """generate encodes each image once: image-side edits apply to it, and all sequences see them."""
    patches = [[(0, 0), (1, 1)], [(0, 1)]]
    edits = [MaskPixels(patches=patches),
             Ablate(site="vision.blocks.0.hook_resid_post", positions=ImagePatches([[(1, 0)], [(1, 1)]]))]
    gen = model.generate(gen_batch, max_new_tokens=NEW, do_sample=True, num_return_sequences=2, seed=0,
                         interventions=edits)
    pixels = gen_batch.inputs["pixel_values"]
    grey = pixels.masked_fill(pixel_mask(model.adapter, gen_batch.layout, patches, 0, pixels, Call(), None), 0)
    # the vision-block edit, by hand: the same positions ImagePatches resolves to in one forward
    site = "vision.blocks.0.hook_resid_post"
    _, clean = run_with_cache(model, gen_batch, sites=[site], interventions=edits[:1])
    _, edited = run_with_cache(model, gen_batch, sites=[site], interventions=edits)
    where = clean[site] != edited[site]
    assert where.any()
    block = model.module(f"{model.adapter.vision.layers}.0")
    if model.adapter.vision.batched:  # the no-cache reference runs each sample's images once per sequence
        where = where.repeat_interleave(2, 0)
    else:
        runs = where[0].split([int(t.prod()) for t in gen_batch.inputs["image_grid_thw"]])
        where = torch.cat([r for r in runs for _ in range(2)])

    def zero(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[where.reshape(h.shape)] = 0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with hooks(block.register_forward_hook(zero, prepend=True)):
        check(model, gen_batch, gen, copies=2, pixels=grey, greedy=False)


@pytest.mark.parametrize("steps", [(0,), (2,), (1, 3)])
def test_at_steps_steers_only_the_chosen_forwards(model, gen_batch, steps):
    """Step 0 covers the prompt's positions; step k >= 1 the position of the k-th generated token."""
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    steer = Steer(site="text.blocks.1.hook_resid_pre", vector=vector, scale=2.0)
    gen = model.generate(gen_batch, max_new_tokens=NEW, interventions=[AtSteps(interventions=(steer,), steps=steps)])
    edited_differs(model, gen_batch, gen)
    S = gen_batch.inputs["input_ids"].shape[1]
    covered = [p for k in steps for p in (range(S) if k == 0 else [S + k - 1])]

    def add(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, covered] += 2.0 * vector
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    with hooks(layer(model, 1).register_forward_pre_hook(add, with_kwargs=True)):
        check(model, gen_batch, gen)


def test_at_steps_with_image_side_edits_acts_at_the_prompt_only(model, gen_batch, caplog):
    ablate = Ablate(site="projector.hook_out")
    inside = model.generate(gen_batch, max_new_tokens=NEW, interventions=[AtSteps(interventions=(ablate,), steps=(0,))])
    plain = model.generate(gen_batch, max_new_tokens=NEW, interventions=[ablate])
    with caplog.at_level("WARNING", logger="vlmlens.ops.interventions"):
        never = model.generate(gen_batch, max_new_tokens=NEW,
                               interventions=[AtSteps(interventions=(ablate,), steps=(1, 2))])
    assert "change nothing" in caplog.text
    assert torch.equal(inside.scores, plain.scores)
    assert torch.equal(never.scores, model.generate(gen_batch, max_new_tokens=NEW).scores)


def test_at_steps_bad_input():
    from vlmlens.errors import InterventionError

    steer = Steer(site="text.blocks.1.hook_resid_pre", vector=torch.zeros(4))
    with pytest.raises(InterventionError, match="tuple of interventions"):
        AtSteps(interventions=steer, steps=(0,))
    with pytest.raises(InterventionError, match="count from 0"):
        AtSteps(interventions=(steer,), steps=(-1,))
    with pytest.raises(InterventionError, match="tuple of indices"):
        AtSteps(interventions=(steer,), steps=1)
