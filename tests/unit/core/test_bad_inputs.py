"""Bad input gets a clear vlmlens error naming the value and the fix, never a traceback from
deep inside torch, transformers or nnsight. One row per case: (id, call, message pattern)."""

from __future__ import annotations

import pytest
import torch

from vlmlens import HookedVLM, Site
from vlmlens.errors import VLMLensError
from vlmlens.ops import (
    Ablate,
    BlockAttention,
    MaskPixels,
    MaskTokens,
    Patch,
    Steer,
    logit_diff,
    mean_activation,
    patch_heads,
    patch_image_patches,
    patch_neurons,
    patch_residual,
    run_with_cache,
    run_with_interventions,
    sweep,
    top_patches,
)
from vlmlens.ops.positions import ImagePatches
from vlmlens.testing import tiny_images, tiny_vlm

R0 = "text.blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def m():
    return tiny_vlm("llava")


@pytest.fixture(scope="module")
def b(m):
    return m.prepare(tiny_images(2, seed=1), ["Is there a cat in the image?", "Is there a dog?"])


def rwi(m, b, interventions):
    return run_with_interventions(m, b, interventions)


def other_batch(m):
    return m.prepare(tiny_images(1, seed=2), ["Is there a cat in the image? It is a long question"])


CASES = [
    # ---- loading
    ("unknown zoo name", lambda m, b: HookedVLM.from_pretrained("toy-lava"), r"'toy-lava'.*toy-llava"),
    ("missing local path", lambda m, b: HookedVLM.from_pretrained("/nonexistent/model/dir"),
     r"/nonexistent/model/dir.*(not found|does not exist)"),
    ("dtype unknown name", lambda m, b: HookedVLM.from_pretrained("toy-llava", dtype="bfloat"),
     r"dtype 'bfloat' is not a dtype.*'bf16'"),
    ("dtype type", lambda m, b: HookedVLM.from_pretrained("toy-llava", dtype=3), r"dtype 3"),
    ("wrap not a model", lambda m, b: HookedVLM.from_hf("not a model", None), r"got a str, which is not a supported"),
    ("hub id offline", lambda m, b: HookedVLM.from_pretrained("some-org/some-vlm"), r"could not load 'some-org/some-vlm'"),
    ("not a saved model dir", lambda m, b: HookedVLM.from_pretrained("/tmp"), r"/tmp has no config.json"),
    # ---- prepare
    ("prepare empty", lambda m, b: m.prepare([], []), r"no questions"),
    ("prepare count mismatch", lambda m, b: m.prepare(tiny_images(2), ["one question"]),
     r"got 2 image entries for 1 prompt"),
    ("prepare image not PIL", lambda m, b: m.prepare(["x.png"], ["Is there a cat?"]), r"PIL"),
    ("prepare question not str", lambda m, b: m.prepare(tiny_images(1), [3]), r"question.*str"),
    ("prepare padding side", lambda m, b: m.prepare(tiny_images(1), ["q?"], padding_side="middle"),
     r"padding_side.*'left' or 'right'"),
    ("forward not a batch", lambda m, b: m.forward([1, 2, 3]), r"expected a Batch"),
    # ---- sites
    ("site typo", lambda m, b: m.site("text.blocks.0.hook_resid_pots"), r"unknown site.*hook_resid_post"),
    ("site layer out of range", lambda m, b: m.site("text.blocks.9.hook_resid_post"), r"layer 9 is out of range"),
    ("site not a string", lambda m, b: m.site(3), r"site"),
    ("accessor layer", lambda m, b: m.text.resid_post[99], r"layer 99 is out of range"),
    ("accessor layer type", lambda m, b: m.text.resid_post["0"], r"layer '0' is out of range"),
    ("cache unknown site", lambda m, b: run_with_cache(m, b, sites=["text.hook_foo"]), r"unknown site"),
    ("cache bad positions", lambda m, b: run_with_cache(m, b, sites=[R0], positions="middle"),
     r"unknown position kind 'middle'"),
    ("cache position out of range", lambda m, b: run_with_cache(m, b, sites=[R0], positions=[999]),
     r"position 999 is out of range"),
    ("cache key not cached", lambda m, b: run_with_cache(m, b, sites=[R0])[1]["text.blocks.1.hook_resid_post"],
     r"was not cached"),
    ("envoy per image", lambda m, b: tiny_vlm("qwen2_vl").envoy("vision.blocks.0.attn.hook_q"),
     r"runs once per image"),
    # ---- intervention values
    ("bare intervention", lambda m, b: rwi(m, b, Ablate(site=R0)), r"pass a list of interventions"),
    ("not an intervention", lambda m, b: rwi(m, b, ["text.blocks.0.hook_resid_post"]), r"expected Intervention"),
    ("interventions dict", lambda m, b: rwi(m, b, {"a": 1}), r"must be a list"),
    ("heads int", lambda m, b: Ablate(site=R0, heads=1), r"heads=1 must be a tuple.*heads=\(1,\)"),
    ("heads str", lambda m, b: Ablate(site=R0, heads="0"), r"heads='0' must be a tuple of int"),
    ("heads empty", lambda m, b: Ablate(site=R0, heads=()), r"selects nothing"),
    ("dims float", lambda m, b: Ablate(site=R0, dims=(1.5,)), r"dims=.*int"),
    ("site not str", lambda m, b: Ablate(site=3), r"site must be a site name"),
    ("ablate mode", lambda m, b: Ablate(site=R0, mode="mean2"), r"mode must be 'zero' or 'mean'"),
    ("mean missing", lambda m, b: Ablate(site=R0, mode="mean"), r"mode='mean' needs mean"),
    ("mean with zero", lambda m, b: Ablate(site=R0, mean=torch.zeros(64)), r"only used with mode='mean'"),
    ("mean wrong size", lambda m, b: rwi(m, b, [Ablate(site=R0, mode="mean", mean=torch.zeros(3))]),
     r"mean for text.blocks.0.hook_resid_post has shape \(3,\)"),
    ("mean wrong type", lambda m, b: rwi(m, b, [Ablate(site=R0, mode="mean", mean=[0.0] * 64)]),
     r"mean must be a tensor or a RoleMean"),
    ("role mean other site", lambda m, b: rwi(m, b, [Ablate(site="text.blocks.1.hook_resid_post", mode="mean",
                                                          mean=mean_activation(m, b, R0))]),
     r"computed at text.blocks.0.hook_resid_post, not text.blocks.1"),
    ("heads on resid", lambda m, b: rwi(m, b, [Ablate(site=R0, heads=(0,))]), r"heads=... applies to q, k, v"),
    ("head out of range", lambda m, b: rwi(m, b, [Ablate(site="text.blocks.0.attn.hook_z", heads=(7,))]),
     r"head 7 is out of range .* 4 heads"),
    ("kv head out of range", lambda m, b: rwi(m, b, [Ablate(site="text.blocks.0.attn.hook_k", heads=(3,))]),
     r"head 3 is out of range .* 2 heads"),
    ("neuron out of range", lambda m, b: rwi(m, b, [Ablate(site="text.blocks.0.mlp.hook_post", dims=(9999,))]),
     r"neuron index 9999 is out of range"),
    ("dim out of range", lambda m, b: rwi(m, b, [Ablate(site=R0, dims=(64,))]), r"dimension index 64 is out of range"),
    ("negative dim", lambda m, b: rwi(m, b, [Ablate(site=R0, dims=(-1,))]), r"dimension index -1 is out of range"),
    ("positions on vision", lambda m, b: rwi(m, b, [Ablate(site="vision.blocks.0.hook_resid_post", positions="last")]),
     r"vision site: choose its positions with ImagePatches"),
    ("image patches outside grid", lambda m, b: rwi(m, b, [Ablate(site="vision.blocks.0.hook_resid_post",
                                                                positions=ImagePatches([[(7, 7)], []]))]),
     r"patch \(7, 7\) of sample 0 is outside"),
    ("positions padding", lambda m, b: rwi(m, b, [Ablate(site=R0, positions=[0])]), r"position 0 of sample 1 is padding"),
    ("positions kind", lambda m, b: rwi(m, b, [Ablate(site=R0, positions="answer")]), r"unknown position kind"),
    ("steer wrong size", lambda m, b: rwi(m, b, [Steer(site=R0, vector=torch.ones(3))]),
     r"steering vector .* has shape \(3,\)"),
    ("steer not tensor", lambda m, b: Steer(site=R0, vector=[1.0] * 64), r"vector must be a tensor"),
    ("patch not tensor", lambda m, b: Patch(site=R0, source=None), r"source must be a tensor"),
    ("patch other batch size", lambda m, b: rwi(m, b, [Patch(site=R0, source=torch.zeros(1, b.layout.seq_len, 64))]),
     r"expected \(2, "),
    ("patch last-position cache", lambda m, b: rwi(m, b, [Patch(site=R0, source=run_with_cache(
        m, b, sites=[R0], positions="last")[1][R0])]), r"cache the source with positions='all'"),
    ("patch other length", lambda m, b: rwi(m, b, [Patch(site=R0, source=torch.zeros(2, 3, 64))]),
     r"every prompt position"),
    ("patch vision shape", lambda m, b: rwi(m, b, [Patch(site="vision.blocks.0.hook_resid_post",
                                                         source=torch.zeros(2, 3, 5))]), r"patch source for vision"),
    ("mask pixels outside grid", lambda m, b: rwi(m, b, [MaskPixels(patches=[[(9, 0)], []])]),
     r"patch \(9, 0\) of sample 0 is outside"),
    ("mask pixels sample count", lambda m, b: rwi(m, b, [MaskPixels(patches=[[(0, 0)]])]),
     r"patch lists for 1 samples, the batch has 2"),
    ("mask pixels flat list", lambda m, b: rwi(m, b, [MaskPixels(patches=[(0, 0), (1, 1)])]),
     r"patches of sample 0 must be a list of \(row, col\)"),
    ("mask pixels float mask", lambda m, b: rwi(m, b, [MaskPixels(patches=torch.zeros(2, 4, 4))]),
     r"bool tensor of shape"),
    ("mask pixels mask grid", lambda m, b: rwi(m, b, [MaskPixels(patches=torch.zeros(2, 5, 4, dtype=torch.bool))]),
     r"patch mask is \(5, 4\)"),
    ("mask pixels image index", lambda m, b: rwi(m, b, [MaskPixels(patches=[[(0, 0)], []], image=2)]),
     r"image index 2 is out of range"),
    ("mask pixels no layout", lambda m, b: rwi(m, b.inputs, [MaskPixels(patches=[[(0, 0)], []])]),
     r"needs a Batch from model.prepare"),
    ("mask tokens fill size", lambda m, b: rwi(m, b, [MaskTokens(patches=[[(0, 0)], []], fill=torch.zeros(3))]),
     r"fill has shape \(3,\), expected \(d_model=64,\)"),
    ("mask tokens fill str", lambda m, b: MaskTokens(patches=[[(0, 0)], []], fill="mean"), r"fill must be 'zero'"),
    ("block attention layer", lambda m, b: rwi(m, b, [BlockAttention(layers=(5,), patches=[[(0, 0)], []])]),
     r"layer 5 is out of range"),
    ("block attention layers int", lambda m, b: BlockAttention(layers=1, patches=[[(0, 0)], []]),
     r"layers=1 must be a tuple"),
    ("other batch under hooks", lambda m, b: _forward_other(m, b), r"prepared for a batch of 2 sample"),
    # ---- sweeps and patching
    ("sweep empty", lambda m, b: sweep(m, b, []), r"non-empty list of conditions"),
    ("sweep bare", lambda m, b: sweep(m, b, Ablate(site=R0)), r"non-empty list of conditions"),
    ("sweep chunk", lambda m, b: sweep(m, b, [[]], chunk_size=0), r"chunk_size must be an int >= 1"),
    ("sweep dict batch", lambda m, b: sweep(m, b.inputs, [[]]), r"sweep needs a Batch"),
    ("patching layouts differ", lambda m, b: patch_residual(m, b, other_batch(m), logit_diff(3, 4)),
     r"layout"),
    ("patching head point", lambda m, b: patch_heads(m, b, b, logit_diff(3, 4), point="resid_post"),
     r"per-head point"),
    ("patching neuron layer", lambda m, b: patch_neurons(m, b, b, logit_diff(3, 4), layer=7), r"layer 7"),
    ("patching image index", lambda m, b: patch_image_patches(m, b, b, logit_diff(3, 4), image=3), r"image"),
    ("logit_diff empty", lambda m, b: logit_diff([], 4), r"yes_ids"),
    ("top patches fraction", lambda m, b: top_patches(torch.zeros(2, 2), 1.5), r"fraction must be in \(0, 1\]"),
    ("mean no batches", lambda m, b: mean_activation(m, [], R0), r"got no batches"),
    ("mean not batch", lambda m, b: mean_activation(m, [b.inputs], R0), r"needs Batch values"),
    ("generate bad count", lambda m, b: m.generate(b, num_return_sequences=0), r"num_return_sequences"),
    ("generate bad tokens", lambda m, b: m.generate(b, max_new_tokens=0), r"max_new_tokens"),
    ("site parse type", lambda m, b: Site.parse(None), r"site"),
    ("greedy with several sequences", lambda m, b: m.generate(b, num_return_sequences=2), r"needs do_sample=True"),
    ("zero temperature", lambda m, b: m.generate(b, do_sample=True, temperature=0.0), r"temperature must be > 0"),
    ("top_p out of range", lambda m, b: m.generate(b, do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    ("result envoy not requested", lambda m, b: m.envoy("text.blocks.0.attn.hook_result"), r"model.result_hooks"),
    ("pattern request not a pair", lambda m, b: m.patterns([3]).__enter__(), r"not a \(tower, layer\) pair"),
]


def _forward_other(m, b):
    with m.hooks([Ablate(site=R0, positions="last")], b):
        m.forward(other_batch(m))


@pytest.mark.parametrize("call, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_vlmlens_error(m, b, call, pattern):
    with pytest.raises(VLMLensError, match=pattern):
        call(m, b)


def test_table_is_large_enough():
    assert len(CASES) >= 60


def test_a_bad_call_leaves_the_model_clean(m, b):
    before = m.forward(b)
    for _, call, _ in CASES[21:45]:
        with pytest.raises(VLMLensError):
            call(m, b)
    assert torch.equal(m.forward(b), before)
    assert not m._hooks.stack.calls and not m._hooks.stack.steps and not m._hooks.stack.results
