"""The model-card measurements (vlmlens.zoo.card) against the same numbers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmlens import HookedVLM, Tower
from vlmlens.vrp.pipeline import AnswerTokens
from vlmlens.zoo.card import layer_profile
from vlmlens.zoo.cli import main
from vlmlens.zoo.evaluate import eval_questions
from vlmlens.zoo.io import resolve


@pytest.fixture(scope="module")
def profile():
    return layer_profile("toy-llava", n_images=3, n_resamples=50, batch_size=8)


def test_the_profile_equals_hand_computations(profile):
    model = HookedVLM.from_pretrained("toy-llava")
    items = eval_questions(resolve("toy-llava"), "adversarial", 3, 0)
    tokens = AnswerTokens.of(model)
    batch = model.prepare([items.image(i) for i in items.items], [i.text for i in items.items])
    hf = model.hf_model

    def answers(zero_layer: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        handle = None
        if zero_layer is not None:  # the edit by hand: the block's MLP returns zeros
            mlp = model.block_module(Tower.TEXT, zero_layer, "mlp")
            handle = mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        try:
            with torch.no_grad():
                logits = hf(**batch.inputs).logits[:, -1].float()
        finally:
            if handle is not None:
                handle.remove()
        return np.array(tokens.first_answers(logits)), logits

    labels = np.array([i.label for i in items.items])
    clean, logits = answers()
    assert profile.n_questions == len(labels) == 18
    assert profile.accuracy == pytest.approx((clean == labels).mean())
    # The lens after the last block is the model's own output: its margin is the logits' margin.
    sign = torch.tensor([1.0 if lab == "yes" else -1.0 for lab in labels])
    final = (logits[:, list(tokens.yes)].amax(-1) - logits[:, list(tokens.no)].amax(-1)) * sign
    assert profile.answer_margin[-1] == pytest.approx(float(final.mean()), abs=1e-5)
    for layer in range(model.n_layers):
        zeroed, _ = answers(layer)
        assert profile.mlp_zero_flips[layer] == pytest.approx((zeroed != clean).mean())
        assert profile.mlp_zero_accuracy[layer] == pytest.approx((zeroed == labels).mean())
        lo, hi = profile.mlp_zero_flips_ci[layer]
        assert lo <= profile.mlp_zero_flips[layer] <= hi
    assert any(profile.mlp_zero_flips)  # some block's MLP matters: the check above can fail
    gain = np.array(profile.answer_margin) - np.array(profile.answer_margin_blank)
    assert profile.peak_visual_layer == int(np.argmax(gain))


def test_the_card_command_prints_one_row_per_block(profile, capsys):
    assert main(["card", "toy-llava", "--n-images", "1"]) == 2
    assert "needs n_images >= 2" in capsys.readouterr().out
    assert main(["card", "toy-llava", "--n-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "peak visual layer" in out
    assert sum(line.startswith("| ") and line[2].isdigit() for line in out.splitlines()) == len(profile.answer_margin)
