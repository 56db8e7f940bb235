"""Hook points are called only when something can see them, and then always."""

from __future__ import annotations

import pytest
import torch

from vlmlens.hooks import HookPoint
from vlmlens.ops import Ablate, run_with_cache
from vlmlens.testing import tiny_images, tiny_vlm


def _points(model):
    return {name: m for name, m in model.hf_model.named_modules() if isinstance(m, HookPoint)}


@pytest.fixture(scope="module")
def model():
    return tiny_vlm("qwen2_vl", attn_implementation="sdpa")


def test_no_point_is_live_when_nothing_observes(model):  # nothing to call: the activation passes as is
    points = _points(model)
    assert len(points) > 50
    # Qwen2-VL's packed vision k points carry vlmlens's per-image call counter, so they stay live.
    assert sorted(n for n, p in points.items() if p.live()) == sorted(
        n for n in points if n.startswith("model.visual.") and n.endswith("attn.hook_k"))


def test_an_intervention_makes_only_its_point_live(model):
    batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    site = model.text.resid_mid[1]
    counters = {n for n, p in _points(model).items() if p.live()}  # the vision k points (above)
    with model.hooks([Ablate(site=site)], batch):
        live = {n for n, p in _points(model).items() if p.live()}
    assert live - counters == {model.hook_path(site)}
    assert {n for n, p in _points(model).items() if p.live()} == counters  # the hook is gone again


def test_a_global_module_hook_sees_every_point(model):
    batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    seen: list[str] = []
    names = {id(p): n for n, p in _points(model).items()}
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(names[id(module)]) if id(module) in names else None)
    try:
        model.forward(batch)
    finally:
        handle.remove()
    # Every text and projector point fires (result only when requested, pattern/scores on the eager path).
    expected = {n for n in names.values() if not n.endswith(("hook_result", "hook_pattern", "hook_attn_scores"))}
    assert expected <= set(seen)


def test_cached_values_are_the_same_with_the_gate(model):
    """A cache of every resid site equals the residual stream the model's own hidden states give."""
    batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    _, cache = run_with_cache(model, batch, sites=lambda s: s.short == "resid_post" and s.tower.value == "text")
    with torch.no_grad():
        hidden = model.hf_model(**batch.inputs, output_hidden_states=True).hidden_states
    assert torch.equal(cache["text.blocks.0.hook_resid_post"], hidden[1].cpu())
