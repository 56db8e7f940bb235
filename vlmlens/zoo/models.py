"""The HF model class of each family."""

from __future__ import annotations

from transformers import (
    LlavaForConditionalGeneration,
    PaliGemmaForConditionalGeneration,
    PreTrainedModel,
    Qwen2VLForConditionalGeneration,
)

from vlmlens.zoo.tokenizer import Family

MODEL_CLASSES: dict[Family, type[PreTrainedModel]] = {
    "llava": LlavaForConditionalGeneration,
    "paligemma": PaliGemmaForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}
"""Model class per family."""
