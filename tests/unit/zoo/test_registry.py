"""The shipped zoo: names, checkpoint files, loading offline, answers that parse."""

from __future__ import annotations

import pytest
import torch

from vlmlens.data import parse_yes_no, synth_pope
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.evaluate import answer
from vlmlens.zoo.io import load_pretrained, read_meta
from vlmlens.zoo.registry import (
    ALIASES,
    DEFAULT_VERSION,
    NAMES,
    ZOO,
    ZooEntry,
    canonical,
    checkpoint_path,
    entry,
)

VERSIONED = sorted(ZOO)
ARCHITECTURES = {
    "llava": "LlavaForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}
MAX_BYTES = 10 * 1024 * 1024


def test_zoo_names():
    assert VERSIONED == [f"toy-{m}-v{v}" for m in ("llava", "paligemma", "qwen2vl") for v in (1, 2)]
    assert NAMES == ("toy-llava", "toy-paligemma", "toy-qwen2vl", *VERSIONED)


def test_plain_names_are_the_default_version():
    assert ALIASES == {e.alias: e.name for e in ZOO.values() if e.version == DEFAULT_VERSION}
    assert sorted(ALIASES) == ["toy-llava", "toy-paligemma", "toy-qwen2vl"]
    for alias, name in ALIASES.items():
        assert canonical(alias) == canonical(name) == name
        assert entry(alias) is ZOO[name] and entry(alias).version == DEFAULT_VERSION
        assert checkpoint_path(alias) == checkpoint_path(name)
        assert checkpoint_path(alias).name == name


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ZooError, match=r"Unknown zoo model 'toy-lava'; known: toy-llava, toy-paligemma"):
        checkpoint_path("toy-lava")
    with pytest.raises(ZooError, match="Did you mean 'toy-llava'"):
        entry("toy-lava")
    with pytest.raises(ZooError, match=r"Unknown zoo model 'toy-llava-v9'.*toy-llava-v1"):
        canonical("toy-llava-v9")


@pytest.mark.parametrize("name", ["llava", "toy-llava", "toy-llava-v2x", "toy-llava-v2"])
def test_entry_names_are_versioned(name):
    with pytest.raises(ZooError, match=r"'toy-<model>-v<version>' with the entry's version \(1\)"):
        ZooEntry(name=name, family="llava", architecture="X", version=1, description="")


@pytest.mark.parametrize("name", VERSIONED)
def test_checkpoint_files_and_size(name):
    folder = checkpoint_path(name)
    for file in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "zoo.json"):
        assert (folder / file).is_file(), file
    assert (folder / "model.safetensors").stat().st_size <= MAX_BYTES
    meta = read_meta(folder)
    assert meta["family"] == ZOO[name].family
    assert meta.get("zoo_version", 1) == ZOO[name].version  # v1 checkpoints predate the field
    assert meta["recipe"]["data"]["seed"] >= 1000  # disjoint from the test seed 0


@pytest.fixture(scope="module", params=VERSIONED)
def loaded(request):
    model, processor = load_pretrained(request.param)
    return request.param, model, processor


def test_loads_by_name_offline(loaded):
    name, model, processor = loaded
    assert type(model).__name__ == ARCHITECTURES[ZOO[name].family] == ZOO[name].architecture
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert processor.tokenizer.image_token_id == model.config.image_token_id


def test_greedy_answers_parse_to_yes_or_no(loaded):
    _, model, processor = loaded
    ds = synth_pope("adversarial", n_images=2, seed=0)
    items = list(ds.items)
    texts = answer(model, processor, [ds.image(i) for i in items], [i.text for i in items])
    assert all(t in ("Yes", "No") for t in texts), texts
    assert {parse_yes_no(t) for t in texts} <= {"yes", "no"}


def test_logits_are_finite(loaded):
    _, model, processor = loaded
    ds = synth_pope("random", n_images=1, seed=0)
    item = ds.items[0]
    from vlmlens.zoo.data import prompt_text

    family = model.config.model_type
    inputs = processor(images=[ds.image(item)], text=[prompt_text(family, processor, item.text)], return_tensors="pt")
    inputs.pop("labels", None)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
