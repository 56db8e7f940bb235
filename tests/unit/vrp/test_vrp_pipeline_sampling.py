"""Shared-prefill decoding for self-consistency: correct tokens, one image encoding, seeded samples."""

import pytest
import torch

from vlmlens.errors import DataError
from vlmlens.testing import tiny_images, tiny_vlm
from vlmlens.vrp import sampling
from vlmlens.vrp.sampling import decode_shared, sample_top_p

QUESTIONS = ["Is there a cat in the image?", "Is there a big red dog here in the picture or not?", "Dog?"]


@pytest.fixture(scope="module", params=["llava", "paligemma", "qwen2_vl"])
def model_and_batch(request):
    model = tiny_vlm(request.param)
    return model, model.prepare(tiny_images(3, seed=3), QUESTIONS, suffix=True)  # left padding: 3 lengths


def test_top_p_keeps_the_nucleus_and_maps_uniforms_through_its_cdf() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4))
    u = torch.tensor([0.1, 0.6, 0.9, 0.999])
    # top_p=0.8: tokens 0, 1 (cumulative 0.8) are kept; renormalised CDF (0.625, 1.0).
    assert sample_top_p(logits, u, temperature=1.0, top_p=0.8).tolist() == [0, 0, 1, 1]
    # The token crossing top_p is kept: top_p=0.85 keeps token 2 as well.
    assert sample_top_p(logits, u, temperature=1.0, top_p=0.85).tolist() == [0, 1, 2, 2]
    # A vanishing nucleus is greedy, whatever the uniforms.
    assert sample_top_p(logits, u, temperature=1.0, top_p=1e-9).tolist() == [0, 0, 0, 0]
    # A low temperature sharpens towards the argmax.
    assert sample_top_p(logits, u, temperature=0.01, top_p=1.0).tolist() == [0, 0, 0, 0]
    with pytest.raises(DataError, match="temperature must be > 0, got 0"):
        sample_top_p(logits, u, temperature=0, top_p=0.9)
    with pytest.raises(DataError, match=r"top_p must be in \(0, 1\], got 1.5"):
        sample_top_p(logits, u, temperature=1.0, top_p=1.5)


def _reference_top_p(logits: torch.Tensor, uniform: torch.Tensor, temperature: float, top_p: float) -> list[int]:
    """The same draw by a full torch sort of every row, written out row by row."""
    out = []
    for row, u in zip(torch.softmax(logits.double() / temperature, -1), uniform.double()):
        probs, order = row.sort(descending=True)
        mass, kept = 0.0, []
        for p in probs.tolist():
            if mass >= top_p:
                break
            kept.append(p)
            mass += p
        cdf = torch.tensor(kept, dtype=torch.float64).cumsum(0)
        out.append(int(order[min(int((cdf <= u * cdf[-1]).sum()), len(kept) - 1)]))
    return out


@pytest.mark.parametrize("vocab", [3000, 300])  # above and below CPU_SORT_BELOW
@pytest.mark.parametrize("scale", [8.0, 0.05])  # peaked: the nucleus lies in the top 64; spread: it does not
def test_top_p_equals_a_full_sort_whether_or_not_the_nucleus_is_small(scale: float, vocab: int) -> None:
    assert (vocab > sampling.CPU_SORT_BELOW) == (vocab == 3000)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, vocab, generator=gen) * scale
    u = torch.rand(40, generator=gen)
    probs = torch.softmax(logits.double() / 0.7, -1).sort(-1, descending=True).values
    small = bool((probs[:, : sampling.NUCLEUS_CANDIDATES].sum(-1) >= 0.9).all())
    assert small == (scale > 1)  # the two cases take the two paths
    got = sample_top_p(logits, u, temperature=0.7, top_p=0.9).tolist()
    assert got == _reference_top_p(logits, u, 0.7, 0.9)
    assert sample_top_p(logits.clone().requires_grad_(True), u, temperature=0.7, top_p=0.9).tolist() == got
    assert len(set(got)) > 10  # the uniforms reach into the nucleus, not only its top token


def test_greedy_row_equals_generate_on_a_padded_batch(model_and_batch) -> None:
    model, batch = model_and_batch
    reference = model.generate(batch, max_new_tokens=3)
    out = decode_shared(model, batch, k=2, max_new_tokens=3, keys=[1, 2, 3])
    assert out.greedy == reference.texts
    for mine, theirs in zip(out.greedy_logprobs, reference.scores):
        torch.testing.assert_close(torch.as_tensor(mine, dtype=torch.float32), theirs[: len(mine)],
                                   atol=1e-4, rtol=1e-4)


def test_image_is_encoded_once_for_all_k_samples(model_and_batch) -> None:
    model, batch = model_and_batch
    calls = []
    vision = model.module(model.adapter.vision.embed)
    handle = vision.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        out = decode_shared(model, batch, k=5, max_new_tokens=3, keys=[1, 2, 3])
    finally:
        handle.remove()
    assert len(calls) == 1
    assert [len(s) for s in out.samples] == [5, 5, 5]


def test_samples_are_seeded_per_question_not_per_batch(model_and_batch) -> None:
    model, batch = model_and_batch
    both = decode_shared(model, batch, k=4, max_new_tokens=2, seed=7, keys=[10, 20, 30])
    again = decode_shared(model, batch, k=4, max_new_tokens=2, seed=7, keys=[10, 20, 30])
    assert both.samples == again.samples
    alone = decode_shared(model, model.prepare(tiny_images(3, seed=3)[1:2], QUESTIONS[1:2], suffix=True),
                          k=4, max_new_tokens=2, seed=7, keys=[20])
    assert alone.samples[0] == both.samples[1]
    other_seed = decode_shared(model, batch, k=4, max_new_tokens=2, seed=8, keys=[10, 20, 30])
    assert other_seed.samples != both.samples  # random tiny models spread their mass widely


def test_decode_shared_validates(model_and_batch) -> None:
    model, batch = model_and_batch
    with pytest.raises(DataError, match="keys has 2 entries for a batch of 3"):
        decode_shared(model, batch, k=2, keys=[1, 2])
    with pytest.raises(DataError, match="k >= 1 and max_new_tokens >= 1, got k=0"):
        decode_shared(model, batch, k=0, keys=[1, 2, 3])
