"""The model keeps its own attention kernel (SDPA by default) unless a pattern is needed."""

from __future__ import annotations

import pytest
import torch

from vlmlens import HookedVLM
from vlmlens.errors import InputError
from vlmlens.ops import (
    Ablate,
    BlockAttention,
    Patch,
    run_with_cache,
    run_with_interventions,
)
from vlmlens.testing import tiny_hf, tiny_images, tiny_vlm

QS = ["Is there a cat in the image?", "Is there a dog?"]


@pytest.fixture(scope="module")
def pair(family):
    """A HookedVLM on SDPA, the plain SDPA model and the plain eager model (same weights)."""
    hf, processor = tiny_hf(family, attn_implementation="sdpa")
    plain_sdpa, _ = tiny_hf(family, attn_implementation="sdpa")
    plain_eager, _ = tiny_hf(family, attn_implementation="eager")
    return HookedVLM.from_hf(hf, processor), plain_sdpa, plain_eager


@pytest.fixture(scope="module")
def sbatch(pair):
    return pair[0].prepare(tiny_images(2, seed=8), QS)


def test_unedited_forward_is_bit_identical_to_plain_sdpa(pair, sbatch):
    model, plain_sdpa, plain_eager = pair
    assert model.attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = plain_sdpa(**sbatch.inputs).logits
        eager = plain_eager(**sbatch.inputs).logits
    assert torch.equal(model.forward(sbatch), sdpa)
    assert not torch.equal(sdpa, eager)  # the kernels do differ in the last bits, so this test can fail


def test_eager_model_stays_bit_identical_to_plain_eager(family):
    model = tiny_vlm(family)
    plain, _ = tiny_hf(family)
    batch = model.prepare(tiny_images(2, seed=8), QS)
    with torch.no_grad():
        assert torch.equal(model.forward(batch), plain(**batch.inputs).logits)


def test_requested_patterns_attend_eagerly_exactly(pair, sbatch):
    model, _, plain_eager = pair
    with model.patterns():
        every = model.forward(sbatch)
    with torch.no_grad():
        assert torch.equal(every, plain_eager(**sbatch.inputs).logits)
    with model.patterns([(model.text.pattern[0].tower, 0)]):
        one = model.forward(sbatch)
    assert not torch.equal(one, every) or model.n_layers == 1
    assert not model._hooks.stack.patterns


def test_cached_pattern_equals_eager_models_and_edits_match(pair, sbatch, family):
    model, _, _ = pair
    eager = tiny_vlm(family)
    site = "text.blocks.1.attn.hook_pattern"
    _, got = run_with_cache(model, sbatch, sites=[site])
    _, want = run_with_cache(eager, sbatch, sites=[site])
    assert (got[site] - want[site]).abs().max() <= 1e-6
    edits = [BlockAttention(layers=(0,), patches=[[(0, 0)], [(1, 1)]]),
             Patch(site=site, source=want[site], positions="last"),
             Ablate(site="text.blocks.0.attn.hook_z", heads=(1,))]
    assert (run_with_interventions(model, sbatch, edits) - run_with_interventions(eager, sbatch, edits)).abs().max() <= 1e-5


def test_generation_on_sdpa_matches_plain_generate(pair, sbatch):
    model, plain_sdpa, _ = pair
    gen = model.generate(sbatch, max_new_tokens=4)
    with torch.no_grad():
        out = plain_sdpa.generate(**sbatch.inputs, max_new_tokens=4, do_sample=False, temperature=None, top_p=None,
                                  top_k=None, pad_token_id=model.tokenizer.pad_token_id)
    assert torch.equal(gen.token_ids, out[:, sbatch.input_ids.shape[1]:])


def test_raw_trace_of_a_pattern_asks_for_patterns(pair, sbatch):
    model, _, _ = pair
    site = "text.blocks.0.attn.hook_pattern"
    with pytest.raises(InputError, match="model.patterns"):
        model.envoy(site)
    with model.patterns():
        assert model.envoy(site) is not None
