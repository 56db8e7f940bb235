"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP ViT + 2-layer MLP projector + Llama."""

from vlmlens.adapters.base import Adapter, BlockSpec, TowerSpec

LLAMA_BLOCK = BlockSpec(
    attn="self_attn",
    attn_norm="input_layernorm",
    mlp="mlp",
    mlp_norm="post_attention_layernorm",
    mlp_in="gate_proj",
    mlp_down="down_proj",
    o_proj="o_proj",
    mlp_up="up_proj",
    q_proj="q_proj",
    k_proj="k_proj",
    v_proj="v_proj",
)

CLIP_BLOCK = BlockSpec(
    attn="self_attn",
    attn_norm="layer_norm1",
    mlp="mlp",
    mlp_norm="layer_norm2",
    mlp_in="fc1",
    mlp_down="fc2",
    o_proj="out_proj",
    q_proj="q_proj",
    k_proj="k_proj",
    v_proj="v_proj",
)

ADAPTER = Adapter(
    family="llava",
    architecture="LlavaForConditionalGeneration",
    text=TowerSpec(
        layers="model.language_model.layers",
        block=LLAMA_BLOCK,
        config="text_config",
        n_heads="num_attention_heads",
        n_kv_heads="num_key_value_heads",
        embed="model.language_model",
        embed_from="inputs_embeds",
        final_norm="model.language_model.norm",
    ),
    vision=TowerSpec(
        layers="model.vision_tower.encoder.layers",
        block=CLIP_BLOCK,
        config="vision_config",
        n_heads="num_attention_heads",
        embed="model.vision_tower.embeddings",
    ),
    projector="model.multi_modal_projector",
    lm_head="lm_head",
    image_token_attr="image_token_id",
    vision_feature_layer_attr="vision_feature_layer",
    vision_cls=1,
    feature_select_attr="vision_feature_select_strategy",
)
