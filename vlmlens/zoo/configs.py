"""Hugging Face configs of the tiny test models and the toy zoo models.

Three sizes per family:

* ``"tiny"``: random models for unit tests (2 text layers, 2 vision layers, 32x32 images).
* ``"toy"``: the shipped, trained zoo models of v1 (4 text layers, width 128, 64x64 images,
  <= 10 MB fp32).
* ``"toy2"``: the zoo v2 fusion experiment (6 text layers, width 192, 64x64 images), the
  same dimensions and key-value heads in every family so that the arms differ in fusion only.

Token ids in the configs are read from the family's tokenizer, so a config always
matches the tokenizer it was built with.

Examples:
    >>> from vlmlens.zoo.configs import build_config
    >>> cfg = build_config("llava", "tiny")
    >>> cfg.text_config.num_key_value_heads
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    PaliGemmaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import (
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)

from vlmlens.zoo.errors import ZooError, check_family
from vlmlens.zoo.tokenizer import Family, build_tokenizer

Size = Literal["tiny", "toy", "toy2"]
SIZES: tuple[Size, ...] = ("tiny", "toy", "toy2")


@dataclass(frozen=True, kw_only=True)
class Dims:
    """Dimensions shared by the three families at one size.

    Attributes:
        d_model: Text model width.
        d_mlp: Text MLP hidden width.
        n_layers: Text decoder layers.
        n_heads: Text query heads.
        d_vision: Vision tower width.
        d_vision_mlp: Vision MLP hidden width.
        n_vision_layers: Vision encoder layers.
        n_vision_heads: Vision heads.
        image_size: Square image side the processors produce (Qwen2-VL: the smallest).
        patch_size: Vision patch side in pixels.
        max_positions: Text position embeddings (RoPE table size).
        n_kv_heads: Text key-value heads; ``None`` keeps the family's own
            (:data:`KV_HEADS`), a number sets it in every family.
    """

    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    d_vision: int
    d_vision_mlp: int
    n_vision_layers: int
    n_vision_heads: int
    image_size: int
    patch_size: int
    max_positions: int = 512
    n_kv_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "d_vision", "n_vision_heads", "image_size", "patch_size"):
            if getattr(self, name) <= 0:
                raise ZooError(f"Dims.{name} must be positive; got {getattr(self, name)}.")
        if self.d_model % self.n_heads:
            raise ZooError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}."
            )
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ZooError(
                f"n_kv_heads={self.n_kv_heads} must be positive and divide n_heads={self.n_heads}."
            )
        if self.d_vision % self.n_vision_heads:
            raise ZooError(
                f"d_vision={self.d_vision} is not divisible by n_vision_heads={self.n_vision_heads}."
            )
        if self.image_size % self.patch_size:
            raise ZooError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}."
            )

    @property
    def head_dim(self) -> int:
        """Text head dimension."""
        return self.d_model // self.n_heads


DIMS: dict[Size, Dims] = {
    "tiny": Dims(
        d_model=64,
        d_mlp=128,
        n_layers=2,
        n_heads=4,
        d_vision=32,
        d_vision_mlp=64,
        n_vision_layers=2,
        n_vision_heads=4,
        image_size=32,
        patch_size=8,
    ),
    "toy": Dims(
        d_model=128,
        d_mlp=384,
        n_layers=4,
        n_heads=4,
        d_vision=96,
        d_vision_mlp=288,
        n_vision_layers=3,
        n_vision_heads=4,
        image_size=64,
        patch_size=8,
    ),
    "toy2": Dims(
        d_model=192,
        d_mlp=512,
        n_layers=6,
        n_heads=6,
        d_vision=128,
        d_vision_mlp=384,
        n_vision_layers=3,
        n_vision_heads=4,
        image_size=64,
        patch_size=8,
        n_kv_heads=2,
    ),
}

#: Key-value heads per family (Llama / Qwen2: grouped-query; Gemma: multi-query, as PaliGemma-3B).
KV_HEADS: dict[Family, int] = {"llava": 2, "paligemma": 1, "qwen2_vl": 2}


def kv_heads(family: Family, d: Dims) -> int:
    """Text key-value heads of a family at some dimensions."""
    return d.n_kv_heads if d.n_kv_heads is not None else KV_HEADS[family]


def dims(size: Size) -> Dims:
    """The :class:`Dims` of a size.

    Raises:
        ZooError: For an unknown size.
    """
    try:
        return DIMS[size]
    except KeyError:
        raise ZooError(
            f"Unknown model size {size!r}; expected one of {', '.join(SIZES)}."
        ) from None


def build_config(
    family: Family,
    size: Size | Dims = "tiny",
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> PretrainedConfig:
    """The HF config of a family at a size, with token ids from its tokenizer.

    Args:
        family: ``"llava"``, ``"paligemma"`` or ``"qwen2_vl"``.
        size: ``"tiny"``, ``"toy"`` or ``"toy2"``, or the :class:`Dims` themselves.
        tokenizer: The tokenizer the model will use (default: the family's zoo tokenizer).
            For PaliGemma pass the processor's tokenizer.

    Returns:
        A ``LlavaConfig``, ``PaliGemmaConfig`` or ``Qwen2VLConfig`` with eager attention.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
        ZooError: For an unknown size.
    """
    check_family(family)
    d = size if isinstance(size, Dims) else dims(size)
    tok = tokenizer if tokenizer is not None else build_tokenizer(family)
    vocab_size = len(tok)
    if family == "llava":
        cfg: PretrainedConfig = _llava(d, tok, vocab_size)
    elif family == "paligemma":
        cfg = _paligemma(d, tok, vocab_size)
    else:
        cfg = _qwen2_vl(d, tok, vocab_size)
    _set_eager(cfg)
    return cfg


def _llava(d: Dims, tok: PreTrainedTokenizerFast, vocab_size: int) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=d.d_vision,
        intermediate_size=d.d_vision_mlp,
        num_hidden_layers=d.n_vision_layers,
        num_attention_heads=d.n_vision_heads,
        image_size=d.image_size,
        patch_size=d.patch_size,
        projection_dim=d.d_vision,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d.d_model,
        intermediate_size=d.d_mlp,
        num_hidden_layers=d.n_layers,
        num_attention_heads=d.n_heads,
        num_key_value_heads=kv_heads("llava", d),
        max_position_embeddings=d.max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.image_token_id,
        image_seq_length=(d.image_size // d.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def _paligemma(d: Dims, tok: PreTrainedTokenizerFast, vocab_size: int) -> PaliGemmaConfig:
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": d.d_vision,
        "intermediate_size": d.d_vision_mlp,
        "num_hidden_layers": d.n_vision_layers,
        "num_attention_heads": d.n_vision_heads,
        "image_size": d.image_size,
        "patch_size": d.patch_size,
        "vision_use_head": False,
    }
    text = {
        "model_type": "gemma",
        "vocab_size": vocab_size,
        "hidden_size": d.d_model,
        "intermediate_size": d.d_mlp,
        "num_hidden_layers": d.n_layers,
        "num_attention_heads": d.n_heads,
        "num_key_value_heads": kv_heads("paligemma", d),
        "head_dim": d.head_dim,
        "max_position_embeddings": d.max_positions,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "hidden_activation": "gelu_pytorch_tanh",
    }
    return PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.image_token_id,
        vocab_size=vocab_size,
        projection_dim=d.d_model,
        hidden_size=d.d_model,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _qwen2_vl(d: Dims, tok: PreTrainedTokenizerFast, vocab_size: int) -> Qwen2VLConfig:
    half = d.head_dim // 2
    # Qwen2-VL splits each head's rotary frequencies into (temporal, height, width)
    # sections; Qwen2-VL-7B uses [16, 24, 24] of 64. Keep the same 2:3:3 proportions.
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    mrope_section = [t_sec, h_sec, half - t_sec - h_sec]
    vision = Qwen2VLVisionConfig(
        depth=d.n_vision_layers,
        embed_dim=d.d_vision,
        hidden_size=d.d_model,
        num_heads=d.n_vision_heads,
        mlp_ratio=d.d_vision_mlp // d.d_vision,
        patch_size=d.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    text = Qwen2VLTextConfig(
        vocab_size=vocab_size,
        hidden_size=d.d_model,
        intermediate_size=d.d_mlp,
        num_hidden_layers=d.n_layers,
        num_attention_heads=d.n_heads,
        num_key_value_heads=kv_heads("qwen2_vl", d),
        max_position_embeddings=d.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _set_eager(cfg: PretrainedConfig) -> None:
    # Attention weights (attention-map measurements) need the eager implementation.
    cfg._attn_implementation = "eager"
    for sub in ("vision_config", "text_config"):
        sub_cfg = getattr(cfg, sub, None)
        if sub_cfg is not None:
            sub_cfg._attn_implementation = "eager"
