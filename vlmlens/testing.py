"""Tiny in-memory models and images for tests, docs and examples (offline, seconds).

Examples:
    >>> from vlmlens.testing import tiny_hf, tiny_images
    >>> model, processor = tiny_hf("llava")
    >>> inputs = processor(images=tiny_images(1), text=["USER: <image>\\nIs there a cat?\\nASSISTANT:"],
    ...                    return_tensors="pt")
    >>> model(**inputs).logits.shape[0]
    1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from vlmlens.zoo.configs import build_config, dims
from vlmlens.zoo.models import MODEL_CLASSES
from vlmlens.zoo.processors import build_processor

if TYPE_CHECKING:
    from vlmlens.model import HookedVLM

__all__ = ["tiny_hf", "tiny_images", "tiny_paligemma2", "tiny_vlm"]


def tiny_hf(
    family: Literal["llava", "paligemma", "qwen2_vl"], *, seed: int = 0,
    attn_implementation: Literal["eager", "sdpa"] = "eager",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random HF model of a family, with its working processor.

    The model has 2 text layers (d_model 64, 4 query heads; Llama and Qwen2 with 2
    key-value heads, Gemma with 1), a 2-layer vision tower, 32x32 images and 8-pixel
    patches, eager attention, fp32, and is in eval mode.

    Args:
        family: ``"llava"``, ``"paligemma"`` or ``"qwen2_vl"``.
        seed: Seed for the random weights (``torch.manual_seed`` before construction).
        attn_implementation: The attention kernel (``"eager"``, or ``"sdpa"`` as transformers
            loads these families by default).

    Returns:
        ``(model, processor)``: a ``LlavaForConditionalGeneration``,
        ``PaliGemmaForConditionalGeneration`` or ``Qwen2VLForConditionalGeneration``
        and its ``LlavaProcessor``, ``PaliGemmaProcessor`` or ``Qwen2VLProcessor``.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
    """
    d = dims("tiny")
    processor = build_processor(family, image_size=d.image_size, patch_size=d.patch_size)
    config = build_config(family, "tiny", tokenizer=processor.tokenizer)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config)
    model.to(torch.float32)
    model.eval()
    for sub in (config, config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    return model, processor


def tiny_paligemma2(*, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random PaliGemma-2: ``tiny_hf("paligemma")`` with a Gemma-2 language model.

    Gemma-2 brings sandwich norms (a norm on each branch's output), soft-capped attention
    logits (0.02, so the cap matters at this scale) and final-logit soft-capping (30).
    """
    from transformers import Gemma2Config, PaliGemmaForConditionalGeneration

    d = dims("tiny")
    processor = build_processor("paligemma", image_size=d.image_size, patch_size=d.patch_size)
    config = build_config("paligemma", "tiny", tokenizer=processor.tokenizer)
    t = config.text_config
    config.text_config = Gemma2Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, attn_logit_softcapping=0.02,
        final_logit_softcapping=30.0, query_pre_attn_scalar=t.head_dim, sliding_window=8,
        pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id)
    config.text_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return PaliGemmaForConditionalGeneration(config).eval(), processor


def tiny_vlm(
    family: Literal["llava", "paligemma", "qwen2_vl"], *, seed: int = 0,
    attn_implementation: Literal["eager", "sdpa"] = "eager",
) -> HookedVLM:
    """A tiny random HookedVLM of a family, built offline (see :func:`tiny_hf`).

    Examples:
        >>> model = tiny_vlm("paligemma")
        >>> model.n_layers
        2
    """
    from vlmlens.model import HookedVLM

    return HookedVLM.from_hf(*tiny_hf(family, seed=seed, attn_implementation=attn_implementation))


def tiny_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    """Deterministic random RGB images.

    Args:
        n: Number of images.
        size: Side in pixels.
        seed: Seed of the pixel values.

    Returns:
        ``n`` PIL RGB images of ``size`` x ``size`` pixels.

    Raises:
        ValueError: If ``n`` is negative or ``size`` is not positive.
    """
    if n < 0 or size <= 0:
        raise ValueError(f"tiny_images needs n >= 0 and size > 0; got n={n}, size={size}.")
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for _ in range(n)
    ]
