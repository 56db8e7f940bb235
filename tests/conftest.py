import beartype  # noqa: F401  (import before nnsight, which breaks a later beartype import)
import pytest
import torch
import transformers

from vlmlens.testing import tiny_hf, tiny_images, tiny_vlm

transformers.logging.set_verbosity_error()
FAMILIES = ("llava", "paligemma", "qwen2_vl")


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def model(family):
    torch.manual_seed(0)
    return tiny_vlm(family)


@pytest.fixture(scope="session")
def reference(family):
    """The same tiny model, plain transformers, no vlmlens hooks."""
    hf, _ = tiny_hf(family)
    return hf


@pytest.fixture(scope="session")
def batch(model):
    return model.prepare(tiny_images(2, seed=1), ["Is there a cat in the image?", "Is there a dog?"])


@pytest.fixture(scope="session")
def single(model):
    return model.prepare(tiny_images(1, seed=2), ["Is there an apple in the image?"])
