"""PaliGemma (``PaliGemmaForConditionalGeneration``): SigLIP + linear projector + Gemma prefix-LM."""

from dataclasses import replace

from vlmlens.adapters.base import TowerSpec
from vlmlens.adapters.llava import ADAPTER as LLAVA
from vlmlens.adapters.llava import CLIP_BLOCK

# Gemma's block has Llama's layout; SigLIP's has CLIP's. Only the differences are stated.
ADAPTER = replace(
    LLAVA,
    family="paligemma",
    architecture="PaliGemmaForConditionalGeneration",
    vision=TowerSpec(
        layers="model.vision_tower.encoder.layers",
        block=CLIP_BLOCK,
        config="vision_config",
        n_heads="num_attention_heads",
        embed="model.vision_tower.embeddings",
    ),
    prefix_lm=True,
)
