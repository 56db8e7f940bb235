"""Evaluate a zoo model on SynthPOPE with greedy decoding and POPE's own metrics.

Examples:
    >>> from vlmlens.zoo.evaluate import evaluate
    >>> print(evaluate("toy-llava", "adversarial", n_images=20))  # doctest: +SKIP
    n=120 acc=...
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from vlmlens.data import (
    PopeDataset,
    PopeMetrics,
    SynthConfig,
    parse_yes_no,
    pope_metrics,
    synth_pope,
)
from vlmlens.data.pope import Split
from vlmlens.progress import progress_bar
from vlmlens.zoo.data import prompt_text
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.io import load_pretrained, read_meta, resolve

logger = logging.getLogger(__name__)

_FAMILY = {"llava": "llava", "paligemma": "paligemma", "qwen2_vl": "qwen2_vl"}


def answer(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 3,
) -> list[str]:
    """Greedy answers of a zoo-family model to one question per image.

    Args:
        model: A LLaVA, PaliGemma or Qwen2-VL model.
        processor: Its processor.
        images: One image per question.
        questions: The questions (plain text; the family's template is applied).
        max_new_tokens: Tokens to generate at most.

    Returns:
        The decoded answers, special tokens removed.

    Raises:
        ZooError: If the lengths differ or the model is not of a zoo family.
    """
    if len(images) != len(questions):
        raise ZooError(f"answer() needs one image per question; got {len(images)} and {len(questions)}.")
    family = _FAMILY.get(model.config.model_type)
    if family is None:
        raise ZooError(f"answer() supports llava, paligemma and qwen2_vl; got {model.config.model_type!r}.")
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        texts = [prompt_text(family, processor, q) for q in questions]
        inputs = processor(images=list(images), text=texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    inputs.pop("labels", None)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    new = out[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def eval_questions(folder: Path, split: Split, n_images: int, seed: int, *, synth: SynthConfig | None = None) -> PopeDataset:
    """The SynthPOPE questions a zoo checkpoint is tested on: ``synth``'s knobs, by default
    those it was trained with (its ``zoo.json``), else the SynthPOPE defaults."""
    if synth is None:
        knobs = read_meta(folder).get("eval_synth")
        synth = SynthConfig.from_dict(knobs) if knobs else SynthConfig()
    return synth_pope(split, config=dataclasses.replace(synth, n_images=n_images, seed=seed))


def evaluate(
    name_or_path: str | Path,
    split: Split,
    n_images: int = 500,
    seed: int = 0,
    *,
    synth: SynthConfig | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 3,
    progress: bool = True,
) -> PopeMetrics:
    """POPE metrics of a zoo model on a SynthPOPE split.

    Args:
        name_or_path: A zoo name (``"toy-llava"``) or a checkpoint folder.
        split: ``"random"``, ``"popular"`` or ``"adversarial"``.
        n_images: Test images (6 questions each).
        seed: SynthPOPE seed of the test set (training used seeds >= 1000).
        synth: SynthPOPE knobs; default: those the model was trained with (its
            ``zoo.json``), else the SynthPOPE defaults.
        batch_size: Questions per generate call.
        max_new_tokens: Greedy tokens per answer (the toys answer in 1 + end token).
        progress: Show a tqdm progress bar.

    Returns:
        The :class:`~vlmlens.data.PopeMetrics`.

    Raises:
        ZooError: For an unknown zoo name or folder.
    """
    folder = resolve(name_or_path)
    model, processor = load_pretrained(folder)
    ds = eval_questions(folder, split, n_images, seed, synth=synth)
    predictions: list[str] = []
    items = list(ds.items)
    cache: dict[str, Image.Image] = {}
    bar = progress_bar(range(0, len(items), batch_size), desc=f"eval {folder.name} {split}", progress=progress)
    for start in bar:
        chunk = items[start : start + batch_size]
        images = [cache.setdefault(i.image, ds.image(i)) for i in chunk]
        answers = answer(model, processor, images, [i.text for i in chunk], max_new_tokens=max_new_tokens)
        predictions.extend(parse_yes_no(a) for a in answers)
    metrics = pope_metrics(predictions, [i.label for i in items])
    logger.info("%s on %s: %s", folder.name, split, metrics)
    return metrics
