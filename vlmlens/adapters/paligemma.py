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
)
