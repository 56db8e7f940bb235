"""Positive and negative controls: a planted bottleneck must be found and called concentrated;
a distributed control must not be.

The planted model's last MLP is rewired so that 6 named neurons decide the yes/no answer
(:func:`vlmlens.circuits.plant_bottleneck`); questions are labelled with the edited model's
own answers. Recall@6 of the planted neurons is checked for each method that claims to
find causal units (DLA, AtP, exact ablation). The sparse probe is reported, not held to it:
a probe finds units that *predict* the answer, and in these models many units do.
"""

from __future__ import annotations

import pytest
import torch

from vlmlens.circuits import (
    Behaviour,
    ablation_curve,
    concentration,
    localize,
    plant_bottleneck,
    plant_distributed,
    self_labelled,
)
from vlmlens.data import synth_pope
from vlmlens.testing import tiny_vlm

PLANTED = (5, 17, 33, 60, 91, 120)
FRACTION = 0.03  # "concentrated": some k <= 3% of the 256 neurons breaks the answer (6 planted = 2.3%)


def _setup(family, plant):
    torch.manual_seed(0)
    model = tiny_vlm(family)
    layer = model.n_layers - 1
    calibration = Behaviour.from_dataset(synth_pope("adversarial", n_images=16, seed=5))
    plant(model, calibration, layer)
    questions = self_labelled(model, Behaviour.from_dataset(synth_pope("adversarial", n_images=24, seed=0)))
    assert 0.2 < sum(label == "yes" for label in questions.labels) / len(questions) < 0.85  # both answers occur
    return model, layer, *questions.split(0.5, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_planted_bottleneck_is_found_and_called_concentrated(family):
    model, layer, rank, held = _setup(family, lambda m, c, l: plant_bottleneck(m, c, layer=l, neurons=PLANTED))
    for method in ("dla", "atp", "exact"):
        found = localize(model, rank, kind="neuron", method=method, k=len(PLANTED), batch_size=24)
        recall = len({i for l, i in found.chosen if l == layer} & set(PLANTED)) / len(PLANTED)
        assert recall >= 0.8, (method, recall, found.chosen)
        curve = ablation_curve(model, held, found, ks=(1, 3, 6), n_random=10, batch_size=24, n_resamples=300)
        summary = concentration(found, curve, fraction=FRACTION)
        assert summary.concentrated, (method, curve.to_frame())
        assert curve.points[-1].drop_pp >= 20 and curve.points[-1].mcnemar_p < 0.01
    probe = localize(model, rank, kind="neuron", method="probe", target="answer", k=len(PLANTED), batch_size=24)
    assert len(probe.chosen) == len(PLANTED) and probe.provenance["probe_selected"] >= len(PLANTED)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_distributed_control_is_not_called_concentrated(family):
    model, _, rank, held = _setup(family, lambda m, c, l: plant_distributed(m, c, layer=l))
    for method in ("dla", "atp"):
        found = localize(model, rank, kind="neuron", method=method, k=6, batch_size=24)
        curve = ablation_curve(model, held, found, ks=(1, 3, 6), n_random=10, batch_size=24, n_resamples=300)
        summary = concentration(found, curve, fraction=FRACTION)
        assert not summary.concentrated, (method, curve.to_frame())
        assert summary.top_share < 0.3
