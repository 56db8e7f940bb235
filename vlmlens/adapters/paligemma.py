"""PaliGemma (``PaliGemmaForConditionalGeneration``): SigLIP + linear projector + Gemma prefix-LM."""

from dataclasses import replace

from vlmlens.adapters.llava import ADAPTER as LLAVA

# Gemma's block has Llama's module names and SigLIP's has CLIP's, at the same paths, so
# PaliGemma states only what differs: its class and the bidirectional prefix.
ADAPTER = replace(
    LLAVA,
    family="paligemma",
    architecture="PaliGemmaForConditionalGeneration",
    prefix_lm=True,
    text=replace(LLAVA.text, rms_offset=1.0),  # Gemma's RMSNorm scales by 1 + w
    vision_cls=0,  # SigLIP has no class token
    feature_select_attr=None,
    vision_feature_layer_attr=None,
)

# PaliGemma-2 keeps the class but its language model is Gemma-2: a sandwich-norm block
# (a norm on each branch's output before the residual add) and soft-capped attention
# logits (handled by vlmlens's attention function).
GEMMA2_BLOCK = replace(
    LLAVA.text.block,
    mlp_norm="pre_feedforward_layernorm",
    attn_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
)
PALIGEMMA2 = replace(
    ADAPTER,
    text_model_type="gemma2",
    text=replace(ADAPTER.text, block=GEMMA2_BLOCK),
)
