"""Attribution patching: each estimate is the directional derivative of the metric along
(clean - corrupt) for its piece, checked by central finite differences of exact patches."""

from __future__ import annotations

import pytest
import torch

from vlmlens.errors import InputError
from vlmlens.ops import (
    Patch,
    attribute_heads,
    attribute_image_patches,
    attribute_neurons,
    attribute_residual,
    logit_diff,
    patch_residual,
    run_with_cache,
    run_with_interventions,
)
from vlmlens.testing import tiny_images

EPS = 1e-2
QS = ["Is there a cat in the image?", "Is there a dog?"]


def pair(model):
    return model.prepare(tiny_images(2, seed=1), QS), model.prepare(tiny_images(2, seed=2), QS)


def metric_of(model):
    tok = model.tokenizer
    return logit_diff(tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))


def directional(model, clean, corrupt, metric, site, **where):
    """(metric(a + eps d) - metric(a - eps d)) / 2 eps with d = clean - corrupt on one piece, by exact patching."""
    _, c = run_with_cache(model, clean, sites=[site])
    _, k = run_with_cache(model, corrupt, sites=[site])
    diff = c[site] - k[site]
    values = []
    for sign in (1, -1):
        source = k[site] + sign * EPS * diff
        logits = run_with_interventions(model, corrupt, [Patch(site=site, source=source, **where)])
        values.append(float(metric(logits, corrupt)))
    return (values[0] - values[1]) / (2 * EPS)


def close(a, b):
    return abs(a - b) <= 2e-3 * max(1.0, abs(b))


def test_residual_estimates_are_directional_derivatives(model):
    clean, corrupt = pair(model)
    metric = metric_of(model)
    atp = attribute_residual(model, clean, corrupt, metric, layers=[1], positions="image")
    exact = patch_residual(model, clean, corrupt, metric, layers=[1], positions="image")
    assert atp.values.shape == exact.values.shape and atp.labels == exact.labels
    assert abs(atp.corrupt_metric - exact.corrupt_metric) <= 1e-5
    site = model.text.resid_pre[1]
    for k in (0, 3):
        mask = torch.zeros_like(clean.layout.padding)
        for b in range(2):
            mask[b, clean.layout.images[b][0].start + k] = True
        want = directional(model, clean, corrupt, metric, site, positions=mask)
        assert close(float(atp.values[0, k]) - atp.corrupt_metric, want), k


def test_head_estimates(model):
    clean, corrupt = pair(model)
    metric = metric_of(model)
    for point in ("z", "result"):
        atp = attribute_heads(model, clean, corrupt, metric, point=point, layers=[0])
        site = getattr(model.text, point)[0]
        for h in (0, 2):
            want = directional(model, clean, corrupt, metric, site, heads=(h,))
            assert close(float(atp.values[0, h]) - atp.corrupt_metric, want), (point, h)


def test_neuron_and_image_patch_estimates(model):
    clean, corrupt = pair(model)
    metric = metric_of(model)
    neurons = attribute_neurons(model, clean, corrupt, metric, layer=0, neurons=[3, 7])
    site = model.text.mlp_post[0]
    for i, n in enumerate((3, 7)):
        want = directional(model, clean, corrupt, metric, site, dims=(n,), positions="last")
        assert close(float(neurons.values[i]) - neurons.corrupt_metric, want), n
    grid = attribute_image_patches(model, clean, corrupt, metric)
    rows, cols = clean.layout.grid(0)
    assert grid.values.shape == (rows, cols)
    mask = torch.zeros_like(clean.layout.padding)
    for b in range(2):
        mask[b, clean.layout.patch_position(b, 1, 0)] = True
    want = directional(model, clean, corrupt, metric, model.text.embed, positions=mask)
    assert close(float(grid.values[1, 0]) - grid.corrupt_metric, want)


def test_qk_fix_recomputes_the_patched_pattern_exactly(model, batch):
    """The pattern AtP* builds after patching q (or k) equals the pattern of the patched forward."""
    from vlmlens.ops import Patch, run_with_cache
    from vlmlens.ops.attribution import patched_pattern

    other = model.prepare(tiny_images(2, seed=21), ["Is there a cat in the image?", "Is there a dog?"])
    assert other.layout.seq_len == batch.layout.seq_len  # same prompts: q/k sources line up
    sites = [f"text.blocks.1.attn.hook_{x}" for x in ("q", "k", "pattern")]
    _, src = run_with_cache(model, other, sites=sites)
    _, base = run_with_cache(model, batch, sites=sites)
    q, k, pattern = (base[s] for s in sites)
    for i, point in enumerate(("q", "k")):
        _, true = run_with_cache(model, batch, sites=[sites[2]], interventions=[Patch(site=sites[i], source=src[sites[i]])])
        patched = (src[sites[0]], k) if point == "q" else (q, src[sites[1]])
        got = patched_pattern(model, 1, pattern, (q, k), patched)
        real = ~batch.layout.padding  # padding queries attend to nothing real (a uniform row over masked keys)
        torch.testing.assert_close(got.transpose(1, 2)[real], true[sites[2]].transpose(1, 2)[real],
                                   atol=2e-5, rtol=1e-4)


def test_qk_fix_changes_q_and_k_estimates_only(model, batch):
    clean, corrupt = batch, model.prepare(tiny_images(2, seed=21), ["Is there a cat in the image?", "Is there a dog?"])
    metric = logit_diff(5, 7)
    fixed = attribute_heads(model, clean, corrupt, metric, point="k")
    plain = attribute_heads(model, clean, corrupt, metric, point="k", qk_fix=False)
    assert fixed.values.shape == plain.values.shape == (model.n_layers, model.n_kv_heads)
    assert fixed.corrupt_metric == pytest.approx(plain.corrupt_metric)
    assert not torch.allclose(fixed.values, plain.values)
    z = attribute_heads(model, clean, corrupt, metric, point="z")
    assert torch.equal(z.values, attribute_heads(model, clean, corrupt, metric, point="z", qk_fix=False).values)


def test_qk_fix_pattern_with_gemma2_softcap():
    from vlmlens import HookedVLM
    from vlmlens.ops import Patch, run_with_cache
    from vlmlens.ops.attribution import patched_pattern
    from vlmlens.testing import tiny_paligemma2

    model = HookedVLM.from_hf(*tiny_paligemma2())
    question = ["Is there a cat in the image?"]
    batch, other = model.prepare(tiny_images(1, seed=3), question), model.prepare(tiny_images(1, seed=4), question)
    sites = [f"text.blocks.0.attn.hook_{x}" for x in ("q", "k", "pattern")]
    _, src = run_with_cache(model, other, sites=sites)
    _, base = run_with_cache(model, batch, sites=sites)
    _, true = run_with_cache(model, batch, sites=[sites[2]], interventions=[Patch(site=sites[1], source=src[sites[1]])])
    got = patched_pattern(model, 0, base[sites[2]], (base[sites[0]], base[sites[1]]), (base[sites[0]], src[sites[1]]))
    torch.testing.assert_close(got, true[sites[2]], atol=2e-5, rtol=1e-4)


def test_graddrop_matches_hand_autograd_with_a_layer_detached(model, reference, batch):
    """Two layers: layer 0's heads are scored with layer 1's writes detached; layer 1's heads with
    layer 0's (which changes nothing downstream of them), i.e. |AtP|."""
    from vlmlens.ops import graddrop_heads, run_with_cache

    clean, corrupt = batch, model.prepare(tiny_images(2, seed=21), ["Is there a cat in the image?", "Is there a dog?"])
    metric = logit_diff(5, 7)
    scores = graddrop_heads(model, clean, corrupt, metric)
    plain = attribute_heads(model, clean, corrupt, metric, point="z")
    torch.testing.assert_close(scores.values[1], (plain.values[1] - plain.corrupt_metric).abs(), atol=1e-5, rtol=1e-4)
    # Layer 0 by hand: detach layer 1's attention and MLP outputs, differentiate z of layer 0.
    layers = reference.get_submodule("model.language_model.layers")
    kept = {}

    def keep(module, args):
        z = args[0]
        z.retain_grad()
        kept["z"] = z

    def detach_first(module, args, out):
        return (out[0].detach(), *out[1:]) if isinstance(out, tuple) else out.detach()

    hooks = [layers[0].self_attn.o_proj.register_forward_pre_hook(keep),
             layers[1].self_attn.register_forward_hook(detach_first), layers[1].mlp.register_forward_hook(detach_first)]
    try:
        metric(reference(**corrupt.inputs).logits, corrupt).backward()
    finally:
        for h in hooks:
            h.remove()
        reference.zero_grad(set_to_none=True)
    _, cache = run_with_cache(model, clean, sites=["text.blocks.0.attn.hook_z"])
    diff = cache["z", 0] - kept["z"].detach().view_as(cache["z", 0])
    want = (diff * kept["z"].grad.view_as(diff)).sum((0, 1, 3)).abs()
    torch.testing.assert_close(scores.values[0], want, atol=1e-5, rtol=1e-4)


def test_integrated_gradients_average_directional_derivatives_along_the_input_path(model):
    """ig_steps=k: each estimate is the mean, over the k midpoints of the straight line from
    the corrupt to the clean input embeddings, of the directional derivative of the exact patch."""
    from vlmlens.ops import embedding_path, ig_alphas

    clean, corrupt = pair(model)
    metric = metric_of(model)
    ig = attribute_residual(model, clean, corrupt, metric, layers=[1], positions="image", ig_steps=2)
    atp = attribute_residual(model, clean, corrupt, metric, layers=[1], positions="image")
    assert ig.labels == atp.labels and ig.corrupt_metric == atp.corrupt_metric
    assert not torch.allclose(ig.values, atp.values)  # the path matters on a random model
    site = model.text.resid_pre[1]
    _, c = run_with_cache(model, clean, sites=[site])
    _, k = run_with_cache(model, corrupt, sites=[site])
    diff = c[site] - k[site]
    path = embedding_path(model, clean, corrupt)
    for piece in (0, 3):
        mask = torch.zeros_like(clean.layout.padding)
        for b in range(2):
            mask[b, clean.layout.images[b][0].start + piece] = True
        want = 0.0
        for alpha in ig_alphas(2):
            _, on_path = run_with_cache(model, corrupt, sites=[site], interventions=[path(alpha)])
            ends = [float(metric(run_with_interventions(
                model, corrupt, [path(alpha), Patch(site=site, source=on_path[site] + sign * EPS * diff, positions=mask)]),
                corrupt)) for sign in (1, -1)]
            want += (ends[0] - ends[1]) / (2 * EPS) / 2
        assert close(float(ig.values[0, piece]) - ig.corrupt_metric, want), piece


def test_integrated_gradients_at_the_embeddings_add_up_to_the_whole_effect(model):
    """Completeness: the path runs through the embeddings, so the patches' estimates at
    ``hook_embed`` sum to clean - corrupt (up to the midpoint rule's error)."""
    clean, corrupt = pair(model)
    metric = metric_of(model)
    grid = attribute_image_patches(model, clean, corrupt, metric, ig_steps=16)
    total = grid.clean_metric - grid.corrupt_metric
    assert float((grid.values - grid.corrupt_metric).sum()) == pytest.approx(total, rel=2e-2, abs=1e-3)


def test_integrated_gradient_arguments_are_checked(model):
    clean, corrupt = pair(model)
    metric = metric_of(model)
    with pytest.raises(InputError, match="ig_steps must be a whole number"):
        attribute_residual(model, clean, corrupt, metric, layers=[0], ig_steps=-1)
    with pytest.raises(InputError, match="either the QK fix or ig_steps"):
        attribute_heads(model, clean, corrupt, metric, point="q", ig_steps=4)
    heads = attribute_heads(model, clean, corrupt, metric, point="q", qk_fix=False, ig_steps=1, layers=[0])
    assert heads.values.shape == (1, model.n_heads)
