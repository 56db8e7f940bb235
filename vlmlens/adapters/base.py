"""The adapter schema: where each piece of a VLM family lives, as data.

An adapter maps vlmlens's canonical parts (blocks, attention, MLP, norms, projector,
unembedding) to dotted module paths of a Hugging Face model. Hook installation
(:mod:`vlmlens.hooks`) reads these paths; nothing else in vlmlens knows a module name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Adapter", "BlockSpec", "TowerSpec"]


@dataclass(frozen=True, kw_only=True)
class BlockSpec:
    """Module names inside one pre-norm transformer block (relative to the block).

    Every supported block computes ``h = x + attn(attn_norm(x))`` then ``h + mlp(mlp_norm(h))``,
    optionally with a norm on each branch's output before the add (``attn_out_norm``, ``mlp_out_norm``).

    Attributes:
        attn: the attention module.
        attn_norm: the norm before attention.
        mlp: the MLP module.
        mlp_norm: the norm before the MLP; its input is ``hook_resid_mid``.
        mlp_in: module inside ``mlp`` whose output is ``mlp.hook_pre`` (gate / fc1).
        mlp_down: module inside ``mlp`` whose input is ``mlp.hook_post`` (down / fc2).
        o_proj: module inside ``attn`` whose input is ``attn.hook_z``.
        attn_returns_tuple: whether ``attn`` returns ``(output, weights)``.
        attn_out_norm: a norm applied to the attention output before the residual add
            (Gemma-2's sandwich norm), whose output is ``hook_attn_out``; ``None``: none.
        mlp_out_norm: the same after the MLP (its output is ``hook_mlp_out``).
        mlp_up: a gated MLP's up projection (TL's ``W_in``), beside ``mlp_in`` (the gate).
        q_proj, k_proj, v_proj: inside ``attn``, separate query/key/value projections
            (``None`` where they are fused), for TL-shaped weights.
    """

    attn: str
    attn_norm: str
    mlp: str
    mlp_norm: str
    mlp_in: str
    mlp_down: str
    o_proj: str
    attn_returns_tuple: bool = True
    attn_out_norm: str | None = None
    mlp_out_norm: str | None = None
    mlp_up: str | None = None
    q_proj: str | None = None
    k_proj: str | None = None
    v_proj: str | None = None


@dataclass(frozen=True, kw_only=True)
class TowerSpec:
    """Where one tower (text or vision) lives.

    Attributes:
        layers: path of the ``ModuleList`` of blocks, from the model root.
        block: names inside each block.
        config: attribute of the model config holding this tower's config.
        n_heads: attribute of the tower config giving the number of query heads.
        n_kv_heads: attribute giving key/value heads (``None``: same as ``n_heads``).
        embed: path of the module whose input or output is ``hook_embed``.
        embed_from: ``"output"`` of ``embed``, or the name of the keyword argument of
            ``embed``'s forward that carries the embeddings.
        final_norm: path of the final norm (``ln_final.hook_normalized``), or ``None``.
        rms_offset: a text-tower RMSNorm's gain is ``weight + rms_offset`` (Gemma: ``1``).
        batched: ``False`` where the tower flattens all images of a batch into one
            sequence without a batch axis (Qwen2-VL's ViT).
    """

    layers: str
    block: BlockSpec
    config: str
    n_heads: str
    n_kv_heads: str | None = None
    embed: str
    embed_from: Literal["output"] | str = "output"
    final_norm: str | None = None
    rms_offset: float = 0.0
    batched: bool = True


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """Everything vlmlens needs to know about one VLM family.

    Attributes:
        family: short name (``llava``, ``paligemma``, ``qwen2_vl``).
        architecture: the Hugging Face class name it is registered under.
        text: the language model.
        vision: the vision tower.
        projector: path of the module mapping vision features to text embeddings.
        lm_head: path of the unembedding.
        image_token_attr: attribute of the model config holding the image-token id.
        merge: patches merged into one image token per side (2 for Qwen2-VL's merger).
        prefix_lm: whether image + prompt attend bidirectionally (PaliGemma).
        text_model_type: for a variant of an architecture, the language model's
            ``model_type`` it applies to (``None``: the architecture's base adapter).
        vision_cls: class tokens before the patches in the vision tower's sequence (CLIP: 1).
        feature_select_attr: attribute of the model config saying whether the projector
            reads the class token too (LLaVA's ``vision_feature_select_strategy``, ``"full"``).
        vision_feature_layer_attr: attribute of the model config naming the vision layer
            whose output the projector reads (LLaVA's ``vision_feature_layer``, -2 by
            default); later vision blocks never reach the language model.
    """

    family: str
    architecture: str
    text: TowerSpec
    vision: TowerSpec
    projector: str
    lm_head: str
    image_token_attr: str
    merge: int = 1
    prefix_lm: bool = False
    text_model_type: str | None = None
    vision_feature_layer_attr: str | None = None
    vision_cls: int = 0
    feature_select_attr: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
