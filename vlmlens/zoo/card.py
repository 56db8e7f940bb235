"""Where a zoo model's answer forms, measured: the numbers its model card reports.

:func:`layer_profile` runs a zoo checkpoint on a SynthPOPE split and measures, at the last
prompt position (where the answer is read):

* the **logit-lens answer margin** after each text block: the yes/no margin (max logit over
  the single-token spellings of "yes" minus that over "no", unembedded through the real
  final norm) signed towards the correct answer, with the real image and with a blank grey
  one; the **peak visual layer** is where the image adds most of it
  (:func:`~vlmlens.vrp.margins.peak_visual_layer` of these margins). This is not the VRP's
  truth margin, which sets the correct answer against every other token of the vocabulary.
* the **effect of zeroing each block's MLP output** (at every position): the first-token
  accuracy and the share of answers that flip, with a 95% bootstrap CI over images.

Examples:
    >>> from vlmlens.zoo.card import layer_profile
    >>> profile = layer_profile("toy-llava", n_images=20)  # doctest: +SKIP
    >>> print(profile.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmlens.data.pope import Split
from vlmlens.ops import Ablate, run_with_cache, sweep
from vlmlens.sites import Point, Site, Tower
from vlmlens.vrp.margins import peak_visual_layer, yes_no_margin
from vlmlens.vrp.pipeline import AnswerTokens, batches_of, per_layer_logits
from vlmlens.vrp.stats import bootstrap_ci
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.evaluate import eval_questions
from vlmlens.zoo.io import load_pretrained, resolve

__all__ = ["LayerProfile", "layer_profile"]


@dataclass(frozen=True, kw_only=True)
class LayerProfile:
    """Per-layer measurements of one zoo model on one SynthPOPE split (lists index text blocks).

    Attributes:
        model: The checkpoint's name or folder.
        split: The SynthPOPE split.
        n_questions: Questions measured (6 per image).
        seed: SynthPOPE seed of the test scenes.
        accuracy: First-token accuracy, nothing edited.
        answer_margin: Mean logit-lens answer margin (correct minus wrong answer) after each
            block, real image.
        answer_margin_blank: The same with a blank grey image.
        peak_visual_layer: The block after which the image adds most margin.
        mlp_zero_accuracy: First-token accuracy with one block's MLP output zeroed.
        mlp_zero_flips: Share of first-token answers that change when it is zeroed.
        mlp_zero_flips_ci: 95% percentile-bootstrap CI of each share, resampling images.
    """

    model: str
    split: str
    n_questions: int
    seed: int
    accuracy: float
    answer_margin: tuple[float, ...]
    answer_margin_blank: tuple[float, ...]
    peak_visual_layer: int
    mlp_zero_accuracy: tuple[float, ...]
    mlp_zero_flips: tuple[float, ...]
    mlp_zero_flips_ci: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """The model card's table: one row per block."""
        lines = [
            (f"{self.model} on SynthPOPE {self.split} ({self.n_questions} questions, scenes seed {self.seed}): "
             f"first-token accuracy {self.accuracy:.3f}; peak visual layer {self.peak_visual_layer}"),
            "",
            "| block | answer margin, image | blank image | MLP output zeroed: accuracy | answers flipped (95% CI) |",
            "|---|---|---|---|---|",
        ]
        for layer, row in enumerate(zip(self.answer_margin, self.answer_margin_blank, self.mlp_zero_accuracy,
                                        self.mlp_zero_flips, self.mlp_zero_flips_ci, strict=True)):
            real, blank, acc, flips, (lo, hi) = row
            lines.append(f"| {layer} | {real:+.2f} | {blank:+.2f} | {acc:.3f} | {flips:.3f} ({lo:.3f}-{hi:.3f}) |")
        return "\n".join(lines)


def layer_profile(name_or_path: str | Path, split: Split = "adversarial", n_images: int = 100, seed: int = 0, *,
                  batch_size: int = 32, n_resamples: int = 1000) -> LayerProfile:
    """Measure a zoo checkpoint's :class:`LayerProfile` (module docs).

    Args:
        name_or_path: A zoo name or a checkpoint folder.
        split: SynthPOPE split of the test questions.
        n_images: Test scenes (6 questions each); the checkpoint's test knobs (``zoo.json``).
        seed: SynthPOPE seed of the scenes (0: the evaluation scenes; training used >= 1000).
        batch_size: Questions per forward.
        n_resamples: Bootstrap resamples of each CI.

    Raises:
        ZooError: For an unknown zoo name or folder, or fewer than 2 images (the CIs resample images).
    """
    from vlmlens.model import HookedVLM

    if n_images < 2:
        raise ZooError(f"layer_profile needs n_images >= 2 (its CIs resample images), got {n_images}")

    folder = resolve(name_or_path)
    model = HookedVLM.from_hf(*load_pretrained(folder))
    dataset = eval_questions(folder, split, n_images, seed)
    tokens = AnswerTokens.of(model)
    n = model.n_layers
    resid = [Site(Tower.TEXT, Point.RESID_POST, layer) for layer in range(n)]
    zeroed = [[Ablate(site=Site(Tower.TEXT, Point.MLP_OUT, layer))] for layer in range(n)]
    margins, blanks, clean, edited = [], [], [], []
    for _, chunk in batches_of(dataset.items, batch_size):
        images = [dataset.image(item) for item in chunk]
        questions = [item.text for item in chunk]
        sign = np.array([1.0 if item.label == "yes" else -1.0 for item in chunk])[:, None]
        batch = model.prepare(images, questions)
        blank = model.prepare([Image.new("RGB", im.size, (128, 128, 128)) for im in images], questions)
        logits, cache = run_with_cache(model, batch, sites=resid, positions="last", last=True)
        _, blank_cache = run_with_cache(model, blank, sites=resid, positions="last", last=True)
        for layered, out in ((cache, margins), (blank_cache, blanks)):  # batch block, signed towards the truth
            out.append(yes_no_margin(per_layer_logits(model, layered), tokens.yes, tokens.no) * sign)
        clean.append(tokens.first_answers(logits))
        edited.append([tokens.first_answers(c) for c in sweep(model, batch, zeroed, last=True)])
    labels = np.array([item.label for item in dataset.items])
    before = np.concatenate(clean)
    after = np.stack([np.concatenate([batch[layer] for batch in edited]) for layer in range(n)])  # block question
    groups = np.array([item.image for item in dataset.items])
    flips = after != before
    real, blank = np.concatenate(margins), np.concatenate(blanks)
    return LayerProfile(
        model=str(name_or_path), split=split, n_questions=len(labels), seed=seed,
        accuracy=float((before == labels).mean()),
        answer_margin=tuple(real.mean(0).tolist()), answer_margin_blank=tuple(blank.mean(0).tolist()),
        peak_visual_layer=peak_visual_layer(real, blank),
        mlp_zero_accuracy=tuple((after == labels).mean(1).tolist()),
        mlp_zero_flips=tuple(flips.mean(1).tolist()),
        mlp_zero_flips_ci=tuple(bootstrap_ci(np.mean, f.astype(float), groups=groups, n_resamples=n_resamples)
                                for f in flips),
    )  # fmt: skip
