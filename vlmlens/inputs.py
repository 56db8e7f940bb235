"""Model inputs: apply a family's prompt template and processor, and compute the TokenLayout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, no_type_check

import torch
from PIL import Image

from vlmlens.adapters.base import Adapter
from vlmlens.errors import InputError
from vlmlens.layout import TokenLayout

__all__ = ["Batch", "prepare_batch"]


@dataclass(frozen=True)
class Batch:
    """A processed batch and its layout.

    Attributes:
        inputs: the processor's tensors (``input_ids``, ``attention_mask``, ``pixel_values``, ...).
        layout: where image tokens, question and padding sit.
        questions: the questions as given.
    """

    inputs: dict[str, torch.Tensor]
    layout: TokenLayout
    questions: tuple[str, ...]

    def __len__(self) -> int:
        return self.layout.batch_size

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def shape(self) -> torch.Size:
        """``input_ids``'s shape (``batch pos``), so code written for token tensors (e.g.
        TransformerLens's patching functions) can take a Batch."""
        return self.input_ids.shape

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device``."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        return Batch(moved, self.layout, self.questions)


def _as_image_lists(images: Any, n: int) -> list[list[Image.Image]]:
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise InputError(f"images must be a PIL image or a list of them (one per prompt), got {type(images).__name__}")
    images = list(images)
    if len(images) != n:
        raise InputError(
            f"got {len(images)} image entries for {n} prompt(s); pass one image (or one list of images) per prompt"
        )
    out = []
    for i, item in enumerate(images):
        group = [item] if isinstance(item, Image.Image) else list(item) if isinstance(item, (list, tuple)) else [item]
        if not group:
            raise InputError(f"prompt {i} has no image; every prompt needs at least one image")
        wrong = [im for im in group if not isinstance(im, Image.Image)]
        if wrong:
            raise InputError(f"image of prompt {i} is a {type(wrong[0]).__name__} ({wrong[0]!r:.60}), not a PIL image; "
                             "open files with PIL.Image.open(path)")
        out.append([im.convert("RGB") for im in group])
    return out


def _grids(adapter: Adapter, hf_config: Any, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
    if "image_grid_thw" in inputs:
        merge = adapter.merge
        return [(int(h) // merge, int(w) // merge) for _, h, w in inputs["image_grid_thw"].tolist()]
    vision = getattr(hf_config, adapter.vision.config)
    side = vision.image_size // vision.patch_size
    return [(side, side)] * n_images


@no_type_check
def prepare_batch(
    adapter: Adapter,
    hf_config: Any,
    processor: Any,
    images: Any,
    questions: Sequence[str],
    *,
    suffix: bool = False,
    padding_side: Literal["left", "right"] = "left",
) -> Batch:
    """Format prompts with the family template, run the processor, compute the layout.

    Args:
        adapter: the family adapter.
        hf_config: the Hugging Face model config.
        processor: the family's processor.
        images: one PIL image, or one image (or list of images) per question.
        questions: the questions (the template adds the image placeholder and role tags).
        suffix: append POPE's "Answer the question using a single word or phrase."
        padding_side: where to pad a batch of unequal lengths.

    Raises:
        InputError: image and prompt counts disagree, or the processor output is inconsistent.
    """
    from vlmlens.data.prompts import POPE_SUFFIX, format_prompt

    if isinstance(questions, str):
        questions = [questions]
    if not isinstance(questions, Sequence):
        raise InputError(f"questions must be a string or a list of strings, got {type(questions).__name__}")
    questions = list(questions)
    if not questions:
        raise InputError("got no questions; pass one question (and one image) per sample")
    bad = [q for q in questions if not isinstance(q, str)]
    if bad:
        raise InputError(f"every question must be a str, got {bad[0]!r} ({type(bad[0]).__name__})")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    groups = _as_image_lists(images, len(questions))
    tokenizer = processor.tokenizer
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        texts = []
        for question, group in zip(questions, groups):
            prompt = format_prompt(adapter.family, question, suffix=suffix)
            if isinstance(prompt, str):
                # Templates hold one placeholder; more images in one prompt repeat it.
                placeholder = "<image>"
                prompt = prompt.replace(placeholder, placeholder * len(group), 1)
                texts.append(prompt)
            else:
                content = prompt[0]["content"]
                prompt = [{**prompt[0], "content": [{"type": "image"}] * (len(group) - 1) + list(content)}]
                texts.append(processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))
        flat = [im for group in groups for im in group]
        images_arg = flat if adapter.family == "qwen2_vl" else groups
        encoded = processor(images=images_arg, text=texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = old_side
    # PaliGemma's processor also returns training labels; a forward should not compute a loss.
    inputs = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor) and k != "labels"}
    suffix_text = POPE_SUFFIX if suffix else ""
    question_ids = [tokenizer(q + suffix_text, add_special_tokens=False)["input_ids"] for q in questions]
    layout = TokenLayout.from_ids(
        inputs["input_ids"],
        inputs.get("attention_mask"),
        image_token_id=getattr(hf_config, adapter.image_token_attr),
        grids=_grids(adapter, hf_config, inputs, len(flat)),
        question_ids=question_ids,
        prefix_lm=adapter.prefix_lm,
    )
    return Batch(inputs, layout, tuple(questions))
