"""The from_pretrained path a real user takes, exercised on tiny checkpoints saved to disk."""

import pytest
import torch

from vlmlens import HookedVLM
from vlmlens.errors import SiteCheckError
from vlmlens.testing import tiny_hf, tiny_images
from vlmlens.zoo.io import save_processor


def test_from_pretrained_local_directory(family, tmp_path):
    hf, processor = tiny_hf(family)
    hf.save_pretrained(tmp_path)
    save_processor(processor, tmp_path)
    model = HookedVLM.from_pretrained(tmp_path, dtype="float32", device="cpu")
    assert model.family == family and type(model.processor).__name__ == type(processor).__name__
    batch = model.prepare(tiny_images(1), ["Is there a cat in the image?"])
    with torch.no_grad():
        ref = hf(**batch.inputs).logits
    assert (model.forward(batch) - ref).abs().max() <= 1e-5


def test_unreachable_checkpoint_says_so(tmp_path):
    with pytest.raises(OSError):
        HookedVLM.from_pretrained(tmp_path / "missing")


def test_site_that_never_fires_is_an_error(family):
    hf, processor = tiny_hf(family)
    model = HookedVLM.from_hf(hf, processor, check=False)
    for handle in model._hooks.handles:  # simulate an adapter whose hooks capture nothing
        handle.remove()
    with pytest.raises(SiteCheckError, match="never fired in a dummy forward"):
        model.check_sites()


@pytest.mark.parametrize("name", ["toy-llava", "toy-paligemma", "toy-qwen2vl"])
def test_zoo_models_load_by_name_and_pass_the_site_check(name):
    model = HookedVLM.from_pretrained(name)  # 4-layer models: the check covers blocks 0 and 1 in full
    assert model.n_layers >= 3
    assert model.attn_implementation == "sdpa"
