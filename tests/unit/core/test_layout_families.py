import torch

from vlmlens.testing import tiny_images


def test_image_tokens_match_grid(model, batch):
    ids = batch.input_ids
    image_id = getattr(model.hf_model.config, model.adapter.image_token_attr)
    for b in range(len(batch)):
        spans = batch.layout.images[b]
        assert len(spans) == 1
        rows, cols = spans[0].grid
        assert spans[0].n_tokens == rows * cols == int((ids[b] == image_id).sum())
        assert bool((ids[b, spans[0].start : spans[0].stop] == image_id).all())
        assert batch.layout.question[b] is not None
        assert batch.layout.last_prompt[b] == ids.shape[1] - 1  # left padding


def test_prefix_segment_only_for_paligemma(model, batch):
    has_prefix = batch.layout.prefix[0] is not None
    assert has_prefix == (model.family == "paligemma")


def test_qwen_images_of_different_sizes(family):
    if family != "qwen2_vl":
        return
    from vlmlens.testing import tiny_vlm

    model = tiny_vlm("qwen2_vl")
    images = [tiny_images(1, size=32)[0], tiny_images(1, size=48, seed=5)[0].resize((48, 32))]
    batch = model.prepare(images, ["Is there a cat?", "Is there a dog in the image?"])
    assert batch.layout.grid(0) == (2, 2)
    assert batch.layout.grid(1) == (2, 3)
    logits = model.forward(batch)
    assert torch.isfinite(logits).all()


def test_several_images_per_prompt(model):
    images = tiny_images(3, seed=4)
    questions = ["Is there a cat?", "Is there a dog in the image?"]
    batch = model.prepare([[images[0], images[1]], [images[2]]], questions)
    assert [len(spans) for spans in batch.layout.images] == [2, 1]
    image_id = getattr(model.hf_model.config, model.adapter.image_token_attr)
    for b, spans in enumerate(batch.layout.images):
        for span in spans:
            assert bool((batch.input_ids[b, span.start : span.stop] == image_id).all())
    logits = model.forward(batch)
    alone = model.prepare([[images[0], images[1]]], questions[:1])
    ref = model.forward(alone)[0, alone.layout.last_prompt[0]]
    assert torch.allclose(logits[0, batch.layout.last_prompt[0]], ref, atol=1e-4)


def test_pattern_shows_the_family_mask(model, single):
    """PaliGemma's prefix attends bidirectionally; LLaVA and Qwen2-VL are causal."""
    from vlmlens.ops import run_with_cache

    _, cache = run_with_cache(model, single, sites=["text.blocks.0.attn.hook_pattern"])
    future = float(cache["pattern", 0][0].triu(1).sum())
    assert (future > 1e-3) == (model.family == "paligemma")
