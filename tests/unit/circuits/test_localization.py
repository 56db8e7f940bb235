"""Each method's scores equal the same computation written by hand on the plain HF model."""

from __future__ import annotations

import pytest
import torch

from vlmlens.circuits import AnswerIds, Behaviour, localize
from vlmlens.data import synth_pope
from vlmlens.errors import InputError

LAYER = 1


@pytest.fixture(scope="module")
def behaviour():
    return Behaviour.from_dataset(synth_pope("adversarial", n_images=2, seed=3))


def _hand(model, reference, behaviour, *, edit=None, grad=False):
    """Per question: truth margin, the down projection's input at the last position, and its gradient."""
    answers = AnswerIds.of(model)
    down = next(m for n, m in reference.named_modules() if n.endswith(f"layers.{LAYER}.mlp.down_proj"))
    out = {"truth": [], "post": [], "grad": [], "batches": []}
    for rows, batch in behaviour.batches(model, 4):
        last = torch.as_tensor(batch.layout.last_prompt)
        kept = {}

        def pre(module, args, last=last, kept=kept):
            x = args[0]
            if edit is not None:
                x = x.clone()
                x[torch.arange(len(last)), last, edit] = 0.0
            if grad:
                x.retain_grad()
            kept["x"] = x
            return (x,)

        handle = down.register_forward_pre_hook(pre)
        try:
            with torch.set_grad_enabled(grad):
                logits = reference(**batch.inputs).logits
                truth = answers.margin(logits, batch) * behaviour.truth_sign[list(rows)]
                if grad:
                    truth.sum().backward()
        finally:
            handle.remove()
            reference.zero_grad(set_to_none=True)
        x = kept["x"]
        out["truth"].append(truth.detach())
        out["post"].append(x.detach()[torch.arange(len(last)), last])
        if grad:
            out["grad"].append(x.grad[torch.arange(len(last)), last])
        out["batches"].append((rows, batch, logits.detach()))
    return out


def test_exact_scores_are_hand_ablation_drops(model, reference, behaviour):
    found = localize(model, behaviour, kind="neuron", method="exact", layers=[LAYER], k=3, batch_size=4)
    clean = torch.cat(_hand(model, reference, behaviour)["truth"])
    for unit in (0, 17, 63):
        ablated = torch.cat(_hand(model, reference, behaviour, edit=unit)["truth"])
        torch.testing.assert_close(found.scores[0, unit], (clean - ablated).mean(), atol=2e-5, rtol=1e-4)


def test_atp_scores_are_hand_gradients_times_ablation(model, reference, behaviour):
    found = localize(model, behaviour, kind="neuron", method="atp", layers=[LAYER], k=3, batch_size=4)
    hand = _hand(model, reference, behaviour, grad=True)
    post, grad = torch.cat(hand["post"]), torch.cat(hand["grad"])
    want = (post * grad).mean(0)  # -(0 - a) * g, mean over questions
    torch.testing.assert_close(found.scores[0], want, atol=1e-5, rtol=1e-4)


def test_dla_scores_are_hand_direct_logit_attributions(model, reference, behaviour):
    """post x (W_down column . gain * (W_U[true] - W_U[other])) / rms of the final residual."""
    found = localize(model, behaviour, kind="neuron", method="dla", layers=[LAYER], k=3, batch_size=4)
    answers = AnswerIds.of(model)
    norm = next(m for n, m in reference.named_modules() if n.endswith("language_model.norm"))
    down = next(m for n, m in reference.named_modules() if n.endswith(f"layers.{LAYER}.mlp.down_proj"))
    unembed = reference.get_output_embeddings().weight.detach()
    gain = norm.weight.detach() + model.adapter.text.rms_offset
    finals = []
    handle = norm.register_forward_pre_hook(lambda m, a: finals.append(a[0].detach()))
    try:
        hand = _hand(model, reference, behaviour)
    finally:
        handle.remove()
    total = torch.zeros(down.weight.shape[1])
    for (rows, batch, logits), post, final in zip(hand["batches"], hand["post"], finals, strict=True):
        last = torch.as_tensor(batch.layout.last_prompt)
        resid = final[torch.arange(len(last)), last]
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        rms = resid.pow(2).mean(-1, keepdim=True).add(eps).rsqrt()
        rowlogits = logits[torch.arange(len(last)), last]
        for i, r in enumerate(rows):
            yes = answers.yes[int(rowlogits[i, list(answers.yes)].argmax())]
            no = answers.no[int(rowlogits[i, list(answers.no)].argmax())]
            true, other = (yes, no) if behaviour.labels[r] == "yes" else (no, yes)
            direction = gain * (unembed[true] - unembed[other])
            total += post[i] * (direction @ down.weight.detach()) * rms[i]
    torch.testing.assert_close(found.scores[0], total / len(behaviour), atol=1e-5, rtol=1e-4)


def test_result_shape_provenance_and_errors(model, behaviour):
    found = localize(model, behaviour, kind="head", method="dla", k=2)
    assert found.scores.shape == (model.n_layers, model.n_heads) and len(found.chosen) == 2
    assert found.chosen == tuple(found.top(2))
    assert abs(float(found.scores[found.layers.index(found.chosen[0][0]), found.chosen[0][1]])) == float(
        found.scores.abs().max())
    assert found.provenance["n_images"] == 2 and "synth_00000.png" in found.provenance["images"]
    frame = found.to_frame()
    assert len(frame) == model.n_layers * model.n_heads and frame["chosen"].sum() == 2
    with pytest.raises(InputError, match="unknown method"):
        localize(model, behaviour, method="saliency")
    with pytest.raises(InputError, match="unknown unit kind"):
        localize(model, behaviour, kind="neurons")
    with pytest.raises(InputError, match="layers must be text layers"):
        localize(model, behaviour, layers=[7])
    with pytest.raises(InputError, match="k must be in"):
        localize(model, behaviour, kind="head", k=99)
