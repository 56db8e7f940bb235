"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): fused-qkv ViT + patch merger + Qwen2 with M-RoPE."""

from dataclasses import replace

from vlmlens.adapters.base import Adapter, BlockSpec, TowerSpec
from vlmlens.adapters.llava import ADAPTER as LLAVA

QWEN2_VL_VISION_BLOCK = BlockSpec(
    attn="attn",
    attn_norm="norm1",
    mlp="mlp",
    mlp_norm="norm2",
    mlp_in="fc1",
    mlp_down="fc2",
    o_proj="proj",
    attn_returns_tuple=False,
)

ADAPTER: Adapter = replace(
    LLAVA,
    family="qwen2_vl",
    architecture="Qwen2VLForConditionalGeneration",
    vision=TowerSpec(
        layers="model.visual.blocks",
        block=QWEN2_VL_VISION_BLOCK,
        config="vision_config",
        n_heads="num_heads",
        embed="model.visual.patch_embed",
        batched=False,
    ),
    projector="model.visual.merger",
    merge=2,
    vision_cls=0,
    feature_select_attr=None,
    vision_feature_layer_attr=None,
)
