"""Head detectors and attention knockout, against hand computations on the plain model."""

from __future__ import annotations

import pytest
import torch

from vlmlens.errors import InputError, InterventionError
from vlmlens.ops import (
    BlockAttention,
    attention_sinks,
    knockout_flow,
    logit_diff,
    visual_heads,
)
from vlmlens.ops import run_with_interventions as run


def _attentions(reference, batch):
    with torch.no_grad():
        return reference(**batch.inputs, output_attentions=True).attentions  # per layer: batch head q k


def test_visual_heads_are_image_mass_from_the_question(model, reference, batch):
    scores = visual_heads(model, batch, queries="question")
    image = batch.layout.mask("image").float()
    question = batch.layout.mask("question").float()
    for layer, att in enumerate(_attentions(reference, batch)):
        mass = (att * image[:, None, None, :]).sum(-1)  # batch head q
        want = (mass * question[:, None, :]).sum((0, 2)) / question.sum()
        torch.testing.assert_close(scores.values[layer], want, atol=1e-5, rtol=1e-5)
    assert scores.values.shape == (model.n_layers, model.n_heads)
    _, value = scores.top(1)[0]
    assert value == pytest.approx(float(scores.values.max()))


def test_attention_sinks_name_the_most_attended_key(model, reference, single):
    sinks = attention_sinks(model, single)
    real = (~single.layout.padding).float()
    for layer, att in enumerate(_attentions(reference, single)):
        per_key = (att * real[:, None, :, None]).sum((0, 2)) / real.sum()  # head k
        mass, where = per_key.max(-1)
        torch.testing.assert_close(sinks.values[layer], mass, atol=1e-5, rtol=1e-5)
        assert [int(k.split(":")[0]) for k in sinks.keys[layer]] == where.tolist()


def test_block_attention_between_any_groups_equals_a_hand_mask(model, single):
    """question -> image knocked out by hand: zero those pattern entries and renormalise."""
    got = run(model, single, [BlockAttention(layers=(1,), queries="question", keys="image")])
    q, k = single.layout.mask("question")[0], single.layout.mask("image")[0]

    def edit(module, args, output):
        pattern = output.clone()
        block = q[:, None] & k[None, :]
        pattern[0][:, block] = 0
        return pattern / pattern.sum(-1, keepdim=True)

    handle = model.module(model.hook_path("text.blocks.1.attn.hook_pattern")).register_forward_hook(edit)
    try:
        with model.patterns([("text", 1)]):
            want = model.forward(single)
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, model.forward(single), atol=1e-5)


def test_knockout_flow_equals_one_run_per_condition(model, single):
    metric = logit_diff(5, 7)
    base = float(metric(model.forward(single), single))
    flow = knockout_flow(model, single, metric, queries="last", keys="image", window=2)
    for i, layer in enumerate(range(model.n_layers)):
        span = tuple(range(layer, min(layer + 2, model.n_layers)))
        one = float(metric(run(model, single, [BlockAttention(layers=span, keys="image")]), single))
        assert flow.values[i] == pytest.approx(one - base, abs=1e-5)
    heads = knockout_flow(model, single, metric, keys="question", queries="last", per_head=True, layers=[1])
    one = float(metric(run(model, single, [BlockAttention(layers=(1,), keys="question", heads=(2,))]), single))
    assert heads.values.shape == (1, model.n_heads)
    assert heads.values[0, 2] == pytest.approx(one - base, abs=1e-5)


def test_detector_errors(model, single):
    with pytest.raises(InputError, match="out of range"):
        visual_heads(model, single, layers=[99])
    with pytest.raises(InputError, match="window"):
        knockout_flow(model, single, logit_diff(5, 7), window=0)
    with pytest.raises(InterventionError, match="exactly one"):
        BlockAttention(layers=(0,))
    with pytest.raises(InterventionError, match="every key"):
        run(model, single, [BlockAttention(layers=(0,), keys="all")])
