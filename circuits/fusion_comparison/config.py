"""Settings of the fusion comparison script (frozen; the command line overrides fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Config:
    """Which models and how much data; the search itself is :class:`vlmlens.circuits.fusion.FusionConfig`.

    Attributes:
        models: zoo names, paths or hub ids (``tiny-<family>``: a random tiny model); ``ARM=SRC,SRC,...``
            gives one arm's training seeds, compared across seeds.
        n_images: SynthPOPE adversarial images, halved by image (rank / evaluate).
        quick: the small settings of ``vlmlens circuits fusion --quick``.
        out: where results.json, summary.md and report.html go.
    """

    models: tuple[str, ...] = ("toy-llava-v1", "toy-paligemma-v1", "toy-qwen2vl-v1")
    n_images: int = 40
    quick: bool = False
    out: str = "runs/fusion_comparison"
