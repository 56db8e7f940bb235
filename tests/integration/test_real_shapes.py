"""The real checkpoints' code paths, on their published architectures with random weights.

Each family's real shape (``vlmlens.real_shapes``: LLaVA-1.5-7B, PaliGemma-3B-224,
Qwen2-VL-2B widths, heads, GQA, vocabularies, image and patch sizes; one text block, two
vision blocks) is saved to a directory and loaded through ``HookedVLM.from_pretrained(path)``
as a downloaded checkpoint would be. Slow: about a minute per family on 2 cores.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from vlmlens import HookedVLM
from vlmlens.ops import Ablate, run_with_interventions
from vlmlens.real_shapes import save_real_shape
from vlmlens.testing import tiny_images

pytestmark = pytest.mark.slow

SIZES = {"llava": (336,), "paligemma": (224,), "qwen2_vl": (336, 448)}
GRIDS = {"llava": [(24, 24)], "paligemma": [(16, 16)], "qwen2_vl": [(12, 12), (16, 16)]}


@pytest.fixture(scope="module", params=["llava", "paligemma", "qwen2_vl"])
def real(request, tmp_path_factory):
    family = request.param
    path = save_real_shape(family, tmp_path_factory.mktemp(family))
    model = HookedVLM.from_pretrained(path)
    plain = getattr(transformers, model.adapter.architecture).from_pretrained(path).eval()
    images = [tiny_images(1, size=s, seed=i)[0] for i, s in enumerate(SIZES[family])]
    batch = model.prepare(images, ["Is there a cat in the image?"] * len(images))
    return family, model, plain, batch


def test_published_shapes_and_layout(real):
    family, model, _, batch = real
    widths = {"llava": 4096, "paligemma": 2048, "qwen2_vl": 1536}
    assert model.d_model == widths[family]
    assert (model.n_heads, model.n_kv_heads) == {"llava": (32, 32), "paligemma": (8, 1), "qwen2_vl": (12, 2)}[family]
    assert [s.grid for sample in batch.layout.images for s in sample] == GRIDS[family]
    assert model.attn_implementation == "sdpa"


def test_unedited_logits_equal_the_plain_checkpoint(real):
    _, model, plain, batch = real
    with torch.no_grad():
        want = plain(**batch.inputs).logits
    assert torch.equal(model.forward(batch), want)


def test_head_ablation_equals_hand_edit(real):
    _, model, plain, batch = real
    heads = (0, 5)
    got = run_with_interventions(model, batch, [Ablate(site="text.blocks.0.attn.hook_z", heads=heads)])
    o_proj = plain.get_submodule("model.language_model.layers.0.self_attn.o_proj")
    d = o_proj.in_features // model.n_heads

    def zero(module, args):
        z = args[0].clone()
        for h in heads:
            z[..., h * d : (h + 1) * d] = 0
        return (z,)

    handle = o_proj.register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            want = plain(**batch.inputs).logits
    finally:
        handle.remove()
    assert (got - want).abs().max() <= 1e-4
    assert (got - model.forward(batch)).abs().max() > 1e-4
