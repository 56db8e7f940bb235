"""SAE and transcoder splices: exact against the same splice written by hand on the plain model.

The SAE is trained here, for a few seconds, on the tiny model's residual activations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmlens.errors import InterventionError
from vlmlens.ops import Hook, Splice, run_with_cache, sae_features
from vlmlens.ops import run_with_interventions as run
from vlmlens.testing import tiny_images

TEXT = "model.language_model"


class TinySAE(nn.Module):
    """A ReLU SAE: ``encode(x) = relu((x - b_dec) W_enc + b_enc)``, ``decode(f) = f W_dec + b_dec``."""

    def __init__(self, d: int, m: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(torch.randn(d, m, generator=gen) / d**0.5)
        self.W_dec = nn.Parameter(self.W_enc.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec


SITE = "text.blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def sae(model):
    """Trained on resid_pre of layer 1 over a few tiny batches (loss must drop by half)."""
    images = tiny_images(8, seed=11)
    batch = model.prepare(images, [f"Is there a {w} in the image?" for w in ["cat", "dog", "cup", "car", "bus", "hat", "pen", "box"]])
    _, cache = run_with_cache(model, batch, sites=[SITE])
    x = cache[SITE].flatten(0, 1)
    x = x[batch.layout.padding.flatten() == 0]
    torch.manual_seed(0)
    sae = TinySAE(model.d_model, 4 * model.d_model)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)

    def loss_of():
        f = sae.encode(x)
        return (sae.decode(f) - x).pow(2).sum(-1).mean() + 1e-3 * f.abs().sum(-1).mean()

    first = float(loss_of())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny steps: threads only add synchronisation
    try:
        for _ in range(300):
            opt.zero_grad()
            loss = loss_of()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert float(loss_of()) < 0.5 * first
    return sae.eval().requires_grad_(False)


def _hand(model, reference, batch, edit_resid_pre_1=None, edit_mlp_out_1=None):
    """Logits of the plain HF model with the edit written as hand hooks."""
    layers = reference.get_submodule(f"{TEXT}.layers")
    seen = {}
    handles = []
    if edit_resid_pre_1 is not None:
        def pre(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = edit_resid_pre_1(hidden)
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        handles.append(layers[1].register_forward_pre_hook(pre, with_kwargs=True))
    if edit_mlp_out_1 is not None:
        norm = model.adapter.text.block.mlp_norm
        handles.append(layers[1].get_submodule(norm).register_forward_pre_hook(
            lambda m, a: seen.__setitem__("mid", a[0])))
        handles.append(layers[1].mlp.register_forward_hook(lambda m, a, out: edit_mlp_out_1(seen["mid"], out)))
    try:
        with torch.no_grad():
            return reference(**batch.inputs).logits
    finally:
        for h in handles:
            h.remove()


def test_splice_without_error_term_runs_on_the_reconstruction(model, reference, batch, sae):
    got = run(model, batch, [Splice(site=SITE, sae=sae)])
    want = _hand(model, reference, batch, edit_resid_pre_1=lambda h: sae.decode(sae.encode(h)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, model.forward(batch), atol=1e-4), "the reconstruction changed nothing"


def test_splice_with_error_term_is_a_no_op_until_features_change(model, reference, batch, sae):
    assert torch.equal(run(model, batch, [Splice(site=SITE, sae=sae, keep_error=True)]), model.forward(batch))
    feats = sae_features(model, batch, SITE, sae)
    top = int(feats.sum((0, 1)).argmax())
    got = run(model, batch, [Splice(site=SITE, sae=sae, keep_error=True, ablate=(top,), add={0: 2.0})])

    def hand(h):
        f = sae.encode(h)
        g = f.clone()
        g[..., top] = 0
        g[..., 0] += 2.0
        return h + (sae.decode(g) - sae.decode(f))

    want = _hand(model, reference, batch, edit_resid_pre_1=hand)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, model.forward(batch), atol=1e-4)


def test_transcoder_from_resid_mid_to_mlp_out(model, reference, batch, sae):
    got = run(model, batch, [Splice(site="text.blocks.1.hook_resid_mid", sae=sae,
                                    output_site="text.blocks.1.hook_mlp_out")])
    want = _hand(model, reference, batch, edit_mlp_out_1=lambda mid, out: sae.decode(sae.encode(mid)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_splice_in_generation_and_features(model, single, sae):
    splice = Splice(site=SITE, sae=sae, keep_error=True, set_to={1: 3.0}, positions="image")
    image = single.layout.mask("image")

    def hand(act, hook):  # the same edit as a Hook (itself tested against hand-written generation edits)
        f = sae.encode(act)
        g = f.clone()
        g[..., 1] = 3.0
        new = act + (sae.decode(g) - sae.decode(f))
        S = image.shape[1]
        if act.shape[1] != S:  # a decode step: generated positions are not image tokens
            return act
        return torch.where(image[..., None], new, act)

    a = model.generate(single, max_new_tokens=3, interventions=[splice])
    b = model.generate(single, max_new_tokens=3, interventions=[Hook(site=SITE, fn=hand)])
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.scores, b.scores)
    feats = sae_features(model, single, SITE, sae, positions="last")
    assert feats.shape == (1, 4 * model.d_model)
    _, cache = run_with_cache(model, single, sites=[SITE], positions="last")
    assert torch.equal(feats, sae.encode(cache[SITE]))


def test_splice_errors(model, batch, sae):
    with pytest.raises(InterventionError, match="encode"):
        Splice(site=SITE, sae=nn.Linear(2, 2))
    with pytest.raises(InterventionError, match="out of range"):
        run(model, batch, [Splice(site=SITE, sae=sae, ablate=(10**6,))])
    with pytest.raises(InterventionError, match="must come after"):
        run(model, batch, [Splice(site=SITE, sae=sae, output_site="text.blocks.0.hook_mlp_out")])
    with pytest.raises(InterventionError, match="dict"):
        Splice(site=SITE, sae=sae, add=[1, 2])
    with pytest.raises(InterventionError, match="width"):
        run(model, batch, [Splice(site="text.blocks.1.mlp.hook_post", sae=sae)])
