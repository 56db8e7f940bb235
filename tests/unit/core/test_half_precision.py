"""bf16 / fp16 models load (the load-time identities allow the dtype's rounding) and match plain HF exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmlens.adapters import get_adapter
from vlmlens.errors import SiteCheckError
from vlmlens.model import HookedVLM
from vlmlens.testing import tiny_hf, tiny_images, tiny_paligemma2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_and_matches_plain_hf(family, dtype):
    hf, processor = tiny_hf(family)
    hf = hf.to(dtype)
    model = HookedVLM.from_hf(hf, processor)
    batch = model.prepare(tiny_images(2), ["Is there a cat?", "Is there a dog in the image?"])
    with torch.no_grad():
        want = hf(**batch.inputs).logits
    assert torch.equal(model.forward(batch), want)


def test_a_wrong_adapter_is_still_caught_in_bf16():
    hf, processor = tiny_paligemma2()
    hf = hf.to(torch.bfloat16)
    right = get_adapter("PaliGemmaForConditionalGeneration")
    wrong = dataclasses.replace(dataclasses.replace(right, text_model_type=None), text=right.text)
    with pytest.raises(SiteCheckError, match="hook_resid_mid != hook_resid_pre \\+ hook_attn_out"):
        HookedVLM.from_hf(hf, processor, adapter=wrong)
