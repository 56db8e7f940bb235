import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlmlens import HookedVLM, Site
from vlmlens.errors import InputError, SiteNotFoundError, UnsupportedArchitectureError
from vlmlens.ops import run_with_cache
from vlmlens.sites import Point, Tower
from vlmlens.testing import tiny_images


def test_no_intervention_equals_plain_hf(model, reference, batch):
    with torch.no_grad():
        ref = reference(**batch.inputs, output_hidden_states=True)
    assert (model.forward(batch) - ref.logits).abs().max() <= 1e-5
    logits, cache = run_with_cache(model, batch, sites=lambda s: s.tower is Tower.TEXT and s.point is Point.RESID_POST)
    assert (logits - ref.logits).abs().max() <= 1e-5
    for layer in range(model.n_layers - 1):  # HF's last entry is already normed
        assert torch.allclose(cache["resid_post", layer], ref.hidden_states[layer + 1], atol=1e-6)


def test_every_site_reads_with_its_shape(model, batch):
    _, cache = run_with_cache(model, batch)
    assert list(cache) == model.sites()
    b, seq = batch.input_ids.shape
    hd = model.d_model // model.n_heads
    shapes = {
        "text.hook_embed": (b, seq, model.d_model),
        "text.blocks.0.hook_resid_mid": (b, seq, model.d_model),
        "text.blocks.1.attn.hook_q": (b, seq, model.n_heads, hd),
        "text.blocks.1.attn.hook_k": (b, seq, model.n_kv_heads, hd),
        "text.blocks.1.attn.hook_pattern": (b, model.n_heads, seq, seq),
        "text.blocks.1.attn.hook_result": (b, seq, model.n_heads, model.d_model),
        "text.blocks.0.mlp.hook_post": (b, seq, model.text_config.intermediate_size),
        "text.ln_final.hook_normalized": (b, seq, model.d_model),
        "projector.hook_out": None,
    }
    for name, shape in shapes.items():
        if shape is not None:
            assert tuple(cache[name].shape) == shape, name
    assert cache["projector.hook_out"].shape[-1] == model.d_model
    for site in model.sites():
        act = cache[site]
        assert torch.isfinite(act).all(), site
        if site.point is Point.PATTERN:
            assert torch.allclose(act.sum(-1)[act.sum(-1) > 0], torch.tensor(1.0), atol=1e-5)


def test_head_results_sum_to_attn_out(model, batch):
    _, cache = run_with_cache(model, batch, sites=lambda s: s.tower is Tower.TEXT and s.layer == 1)
    o_proj = model.block_module("text", 1, "o_proj")
    bias = o_proj.bias if o_proj.bias is not None else 0
    assert torch.allclose(cache["result", 1].sum(-2) + bias, cache["attn_out", 1], atol=1e-5)


def test_mlp_post_through_down_proj_is_mlp_out(model, batch):
    _, cache = run_with_cache(model, batch, sites=["text.blocks.0.mlp.hook_post", "text.blocks.0.hook_mlp_out"])
    down = model.block_module("text", 0, "mlp_down")
    assert torch.allclose(down(cache["mlp_post", 0]), cache["mlp_out", 0], atol=1e-6)


def test_pattern_edit_equals_hand_edit(model, reference, single):
    """All attention of layer 0 on key 0: z becomes v[0] (per kv group); check against plain torch."""
    with model.trace(single):
        pattern = model.envoy("text.blocks.0.attn.hook_pattern").output
        edited = torch.zeros_like(pattern)
        edited[..., 0] = 1.0
        model.envoy("text.blocks.0.attn.hook_pattern").output = edited
        logits = model.nn.output.logits.save()
    attn = reference.model.language_model.layers[0].self_attn
    groups = attn.num_key_value_groups
    captured = {}
    h1 = attn.v_proj.register_forward_hook(lambda m, a, o: captured.setdefault("v", o))

    def replace(module, args, kwargs, output):
        v = captured["v"].unflatten(-1, (-1, attn.head_dim))  # batch seq kv d
        z = v[:, :1].repeat_interleave(groups, dim=2).expand(-1, v.shape[1], -1, -1)
        return (attn.o_proj(z.flatten(-2)), None)

    h2 = attn.register_forward_hook(replace, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = reference(**single.inputs).logits
    finally:
        h1.remove()
        h2.remove()
    assert (logits - ref).abs().max() <= 1e-5
    assert (logits - model.forward(single)).abs().max() > 1e-4  # the edit did something


def test_resid_mid_write_is_causal(model, reference, single):
    with model.trace(single):
        model.envoy("text.blocks.0.hook_resid_mid").output = torch.zeros_like(
            model.envoy("text.blocks.0.hook_resid_mid").output)
        logits = model.nn.output.logits.save()
    layer = reference.model.language_model.layers[0]
    handle = layer.register_forward_hook(
        lambda m, a, o: m.mlp(m.post_attention_layernorm(torch.zeros_like(o))))
    try:
        with torch.no_grad():
            ref = reference(**single.inputs).logits
    finally:
        handle.remove()
    assert (logits - ref).abs().max() <= 1e-5


def test_accessors(model):
    assert model.text.resid_post[1] == Site.parse("text.blocks.1.hook_resid_post")
    assert model.text.resid_post[-1].layer == model.n_layers - 1
    assert str(model.vision.pattern[0]) == "vision.blocks.0.attn.hook_pattern"
    assert str(model.projector.proj_out) == "projector.hook_out"
    assert str(model.text.ln_final) == "text.ln_final.hook_normalized"


def test_layer_out_of_range_names_range(model):
    with pytest.raises(SiteNotFoundError, match=r"layer 7 is out of range for the text tower: valid layers are 0..1"):
        model.site("text.blocks.7.hook_resid_post")
    with pytest.raises(SiteNotFoundError, match="Closest valid sites"):
        model.site("text.blocks.0.hook_resid_pots")


def test_unsupported_architecture_lists_supported():
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=32))
    with pytest.raises(UnsupportedArchitectureError,
                       match="'LlamaForCausalLM' is not supported.*LlavaForConditionalGeneration.*Qwen2VL"):
        HookedVLM.from_hf(llama, None)


def test_image_count_errors(model):
    with pytest.raises(InputError, match="got 1 image entries for 2 prompt"):
        model.prepare(tiny_images(1), ["a?", "b?"])
    with pytest.raises(InputError, match="prompt 0 has no image"):
        model.prepare([[]], ["a?"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_sides_agree_at_last_position(model, side):
    images = tiny_images(2, seed=3)
    questions = ["Is there a cat in the image?", "Is there a dog?"]
    batch = model.prepare(images, questions, padding_side=side)
    assert batch.layout.padding_side == side
    logits = model.forward(batch)
    for i in range(2):
        alone = model.prepare(images[i : i + 1], questions[i : i + 1])
        last = alone.layout.last_prompt[0]
        ref = model.forward(alone)[0, last]
        assert torch.allclose(logits[i, batch.layout.last_prompt[i]], ref, atol=1e-4)


def test_generate_returns_text_and_ids(model, single):
    out = model.generate(single, max_new_tokens=3)
    assert len(out.texts) == 1 and out.token_ids.shape == (1, 3)
    sampled = model.generate(single, max_new_tokens=2, do_sample=True, temperature=0.7, top_p=0.9,
                             num_return_sequences=3, seed=0)
    assert sampled.token_ids.shape == (3, 2) and len(sampled.texts) == 3
