"""Settings of the reliability-neuron search (frozen; the command line overrides fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Config:
    """Which models, how many questions, which methods, how many units.

    Attributes:
        models: zoo names, paths or hub ids (``tiny-<family>``: a random tiny model).
        n_images: SynthPOPE adversarial images (6 questions each), halved by image.
        methods: ranking methods compared on the same units.
        k: units each method chooses.
        ks: top-k ablated on the held-out half.
        n_random: matched random draws per k.
        n_resamples: bootstrap resamples per CI.
        seed: data, split, controls, bootstraps.
        out: where results.json goes.
    """

    models: tuple[str, ...] = ("toy-llava-v1", "toy-paligemma-v1", "toy-qwen2vl-v1")
    n_images: int = 40
    methods: tuple[str, ...] = ("dla", "atp", "probe")
    k: int = 16
    ks: tuple[int, ...] = (1, 4, 16)
    n_random: int = 10
    n_resamples: int = 1000
    seed: int = 0
    out: str = "runs/reliability_neurons"
