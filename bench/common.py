"""Shared pieces of the benchmarks: models at three sizes, synchronised timers, interleaved medians.

Every benchmark compares vlmlens with what a user runs without it, in the same process:
the plain transformers model with its default attention kernel (SDPA) and HF's own
``generate``. The plain model is an untouched deep copy taken before vlmlens wraps the
original, so no vlmlens code runs in a baseline.

Sizes (``--scale``):

* ``tiny``: ``vlmlens.testing.tiny_hf`` (2 layers, d_model 64): seconds on a CPU, what CI runs.
* ``reduced``: the real checkpoint's architecture (widths, heads, vocabulary, image and patch
  sizes; :mod:`vlmlens.real_shapes`) with 2 text and 2 vision blocks.
* ``full``: the real checkpoint's architecture at its published depth (LLaVA-1.5-7B: 32 text,
  24 vision blocks; PaliGemma-3B: 18, 27; Qwen2-VL-2B: 28, 32), for a GPU.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from vlmlens import HookedVLM
from vlmlens.data import synth_pope
from vlmlens.testing import tiny_hf
from vlmlens.zoo.models import MODEL_CLASSES

FAMILIES = ("llava", "paligemma", "qwen2_vl")
FULL_DEPTH = {"llava": (32, 24), "paligemma": (18, 27), "qwen2_vl": (28, 32)}
"""Text and vision blocks of the real checkpoints (REAL_CHECKPOINTS in vlmlens.real_shapes)."""
IMAGE_SIDE = {"tiny": 32, "reduced": 336, "full": 336}
"""Side of the benchmark images in pixels (Qwen2-VL's grid follows it: 336 px -> 12x12 merged tokens)."""


def build(family: str, scale: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32
          ) -> tuple[HookedVLM, torch.nn.Module]:
    """The hooked model and an untouched copy of the same HF model (the baseline), SDPA attention."""
    if scale == "tiny":
        hf, processor = tiny_hf(family, attn_implementation="sdpa")
        hf = hf.to(device=device, dtype=dtype)
    else:
        from vlmlens.real_shapes import real_shape_config, real_shape_processor

        text, vision = FULL_DEPTH[family] if scale == "full" else (2, 2)
        processor = real_shape_processor(family)
        config = real_shape_config(family, processor.tokenizer, text_layers=text, vision_layers=vision)
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):  # random init on the device: a 7B model builds in seconds on a GPU
                hf = MODEL_CLASSES[family](config).eval()
        finally:
            torch.set_default_dtype(default)
    plain = copy.deepcopy(hf)
    return HookedVLM.from_hf(hf, processor), plain


class Preloaded:
    """The first ``n`` SynthPOPE adversarial questions with their images rendered up front, so
    every variant timed reads the same images and none pays for rendering them."""

    def __init__(self, n: int, side: int | None = None) -> None:
        ds = synth_pope("adversarial", n_images=n // 6 + 1, seed=0, image_size=side).subset(n)
        self.items = ds.items
        self._images = {item.question_id: ds.image(item) for item in ds.items}

    def image(self, item: Any) -> Any:
        return self._images[item.question_id]


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device | str
                ) -> dict[str, float]:
    """Median seconds per variant; one warm-up each, then ``repeats`` rounds in turn.

    Interleaving makes a change of machine load hit every variant alike.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
