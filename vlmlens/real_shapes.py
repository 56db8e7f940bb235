"""Real checkpoints' architectures, built offline with random weights.

No weights can be downloaded here, so the code paths for ``llava-hf/llava-1.5-7b-hf``,
``google/paligemma-3b-mix-224`` and ``Qwen/Qwen2-VL-2B-Instruct`` are exercised on models
built from their published config values (widths, heads, grouped-query attention, head
sizes, vocabularies, image and patch sizes, projector shapes) with random weights and,
to fit a CPU, fewer blocks. Processors are the real classes with the real image
settings; the tokenizer is the toy zoo's (its image-token id is written into the
config), since the real tokenizers cannot be fetched either. :func:`save_real_shape`
writes one to a directory that ``HookedVLM.from_pretrained(path)`` loads like a
downloaded checkpoint.

Examples:
    >>> path = save_real_shape("paligemma", "/tmp/pg-3b-shape", text_layers=1, vision_layers=1)  # doctest: +SKIP
    >>> HookedVLM.from_pretrained(path)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    CLIPVisionConfig,
    GemmaConfig,
    LlamaConfig,
    LlavaConfig,
    PaliGemmaConfig,
    PretrainedConfig,
    Qwen2VLConfig,
    SiglipVisionConfig,
)

from vlmlens.errors import InputError

__all__ = ["REAL_CHECKPOINTS", "real_shape_config", "real_shape_processor", "save_real_shape"]

Family = Literal["llava", "paligemma", "qwen2_vl"]

REAL_CHECKPOINTS: dict[str, str] = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "paligemma": "google/paligemma-3b-mix-224",
    "qwen2_vl": "Qwen/Qwen2-VL-2B-Instruct",
}
"""The checkpoint whose published architecture each family's real shape copies."""

# Published config values (depth is set by the caller).
_LLAVA_TEXT = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                   vocab_size=32064, rms_norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=False)
_LLAVA_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14,
                     projection_dim=768, hidden_act="quick_gelu")
_GEMMA_TEXT = dict(hidden_size=2048, intermediate_size=16384, num_attention_heads=8, num_key_value_heads=1,
                   head_dim=256, vocab_size=257216, hidden_activation="gelu_pytorch_tanh")
_SIGLIP_VISION = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=224, patch_size=14,
                      vision_use_head=False)
_QWEN_TEXT = dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                  vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True,
                  rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, max_position_embeddings=32768)
_QWEN_VISION = dict(embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2, in_channels=3)
QWEN2_VL_PIXELS = (56 * 56, 28 * 28 * 1280)
"""Qwen2-VL-2B-Instruct's image processor bounds (min_pixels, max_pixels)."""


def _check(family: str, text_layers: int, vision_layers: int) -> None:
    if family not in REAL_CHECKPOINTS:
        raise InputError(f"unknown family {family!r}; real shapes exist for {', '.join(REAL_CHECKPOINTS)}")
    if text_layers < 1 or vision_layers < 1:
        raise InputError(f"need at least one text and one vision layer, got {text_layers} and {vision_layers}")


def real_shape_config(family: Family, tokenizer: Any, *, text_layers: int = 1, vision_layers: int = 2
                      ) -> PretrainedConfig:
    """The published architecture of ``REAL_CHECKPOINTS[family]`` at a chosen depth.

    Args:
        family: ``"llava"``, ``"paligemma"`` or ``"qwen2_vl"``.
        tokenizer: the tokenizer the processor uses (special-token ids come from it).
        text_layers: language-model blocks (the real models have 32, 18 and 28).
        vision_layers: vision blocks (24, 27 and 32). LLaVA reads vision layer -2, so keep >= 2.
    """
    _check(family, text_layers, vision_layers)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if family == "llava":
        return LlavaConfig(
            vision_config=CLIPVisionConfig(**_LLAVA_VISION, num_hidden_layers=vision_layers),
            text_config=LlamaConfig(**_LLAVA_TEXT, num_hidden_layers=text_layers, **ids),
            image_token_index=tokenizer.image_token_id, image_seq_length=576, projector_hidden_act="gelu",
            vision_feature_select_strategy="default", vision_feature_layer=-2)
    if family == "paligemma":
        text = GemmaConfig(**_GEMMA_TEXT, num_hidden_layers=text_layers, **ids)
        return PaliGemmaConfig(
            vision_config=SiglipVisionConfig(**_SIGLIP_VISION, num_hidden_layers=vision_layers, projection_dim=2048),
            text_config=text, image_token_index=tokenizer.image_token_id, vocab_size=text.vocab_size,
            projection_dim=2048, hidden_size=2048, **ids)
    from transformers.models.qwen2_vl.configuration_qwen2_vl import (
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )

    return Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(**_QWEN_VISION, depth=vision_layers).to_dict(),
        text_config=Qwen2VLTextConfig(**_QWEN_TEXT, num_hidden_layers=text_layers, **ids).to_dict(),
        image_token_id=tokenizer.image_token_id, vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id, **ids)


def real_shape_processor(family: Family) -> Any:
    """The family's real processor class with the real checkpoint's image settings."""
    from vlmlens.zoo.processors import build_processor

    if family == "llava":
        return build_processor("llava", image_size=336, patch_size=14)
    if family == "paligemma":
        return build_processor("paligemma", image_size=224, patch_size=14)
    from transformers import Qwen2VLImageProcessorPil

    processor = build_processor("qwen2_vl", image_size=56, patch_size=14, max_image_size=1008)
    low, high = QWEN2_VL_PIXELS
    processor.image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": low, "longest_edge": high}, patch_size=14, merge_size=2, temporal_patch_size=2,
        image_mean=list(processor.image_processor.image_mean), image_std=list(processor.image_processor.image_std))
    return processor


def save_real_shape(family: Family, out: str | Path, *, text_layers: int = 1, vision_layers: int = 2,
                    seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Build a real-architecture model with random weights and save it with its processor.

    Returns:
        The directory, loadable with ``HookedVLM.from_pretrained``.
    """
    from vlmlens.zoo.io import save_processor
    from vlmlens.zoo.models import MODEL_CLASSES

    _check(family, text_layers, vision_layers)
    processor = real_shape_processor(family)
    config = real_shape_config(family, processor.tokenizer, text_layers=text_layers, vision_layers=vision_layers)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config).to(dtype).eval()
    out = Path(out)
    model.save_pretrained(out)
    save_processor(processor, out)
    return out
