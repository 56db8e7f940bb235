"""Held-out ablation curves: matched random controls, the three baselines, the statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlmlens.circuits import (
    AnswerIds,
    Behaviour,
    ablation_curve,
    localize,
    matched_random,
)
from vlmlens.circuits.validate import N_BINS
from vlmlens.data import synth_pope
from vlmlens.errors import InputError
from vlmlens.ops import Ablate, run_with_interventions


@pytest.fixture(scope="module")
def parts():
    return Behaviour.from_dataset(synth_pope("adversarial", n_images=6, seed=1)).split(0.5, seed=0)


def test_random_controls_match_layer_and_magnitude(model, parts):
    rank, _ = parts
    found = localize(model, rank, kind="neuron", method="dla", k=6)
    rng = np.random.default_rng(0)
    magnitude = {l: np.random.default_rng(l).gamma(2.0, size=found.scores.shape[1]) for l in found.layers}
    units = found.top(6)
    for _ in range(20):
        drawn = matched_random(found, units, magnitude, rng)
        assert [l for l, _ in drawn] == [l for l, _ in units]  # same layer, unit by unit
        assert not set(drawn) & set(units) and len(set(drawn)) == len(drawn)
        for (layer, a), (_, b) in zip(units, drawn, strict=True):
            edges = np.quantile(magnitude[layer], np.linspace(0, 1, N_BINS + 1)[1:-1])
            bin_of = lambda i: int(np.searchsorted(edges, magnitude[layer][i], side="right"))
            assert bin_of(a) == bin_of(b)


def test_curve_matches_hand_ablation_on_held_out_images(model, parts):
    rank, held = parts
    found = localize(model, rank, kind="neuron", method="dla", k=4)
    curve = ablation_curve(model, held, found, ks=(2,), n_random=3, n_resamples=100)
    (point,) = curve.points
    assert point.k == 2 and point.n == len(held) and point.n_images == 3 and point.n_random == 3
    answers = AnswerIds.of(model)
    clean, top = [], []
    for rows, batch in held.batches(model, 8):
        sign = held.truth_sign[list(rows)]
        clean.append(answers.margin(model.forward(batch), batch) * sign)
        edits = [Ablate(site=model.text.mlp_post[l], positions="last", dims=(i,)) for l, i in found.top(2)]
        top.append(answers.margin(run_with_interventions(model, batch, edits), batch) * sign)
    clean, top = torch.cat(clean), torch.cat(top)
    assert point.accuracy_clean == pytest.approx(float((clean > 0).float().mean()))
    assert point.accuracy_top == pytest.approx(float((top > 0).float().mean()))
    assert point.margin_change_top == pytest.approx(float((top - clean).mean()), abs=1e-5)
    assert point.excess_ci[0] <= point.excess <= point.excess_ci[1]
    assert 0 < point.excess_p <= 1 and 0 <= point.mcnemar_p <= 1
    assert curve.to_frame().shape[0] == 1 and curve.evaluated_on == held.source


def test_baselines_and_per_layer_curves(model, parts):
    rank, held = parts
    found = localize(model, rank, kind="head", method="atp", k=2)
    for baseline in ("zero", "mean", "resample"):
        curve = ablation_curve(model, held, found, ks=(1, 2), layers=[0, 1], baseline=baseline, n_random=2,
                               n_resamples=50)
        assert [(p.layer, p.k) for p in curve.points] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        assert curve.baseline == baseline


def test_ranking_images_cannot_be_evaluated_on(model, parts):
    rank, _ = parts
    found = localize(model, rank, kind="neuron", method="dla", k=2)
    with pytest.raises(InputError, match="used both to rank and to evaluate"):
        ablation_curve(model, rank, found, ks=(1,), n_random=1)
    with pytest.raises(InputError, match="baseline must be"):
        ablation_curve(model, parts[1], found, baseline="noise")
    lonely = dataclasses.replace(parts[1].subset(range(6), "one image"))
    with pytest.raises(InputError, match="at least two images"):
        ablation_curve(model, lonely, found, ks=(1,), n_random=1, baseline="resample")
