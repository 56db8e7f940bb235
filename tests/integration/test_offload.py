"""A model with layers offloaded by accelerate (weights on disk, ``meta`` outside each forward)
computes exactly what the same model in memory does: forward, per-head results, edits."""

from __future__ import annotations

import pytest
import torch

from vlmlens import HookedVLM
from vlmlens.ops import Ablate, run_with_cache
from vlmlens.ops import run_with_interventions as run
from vlmlens.testing import tiny_hf, tiny_images
from vlmlens.zoo.io import save_processor


def _device_map(hf: torch.nn.Module) -> dict[str, str]:
    """Text layers 0, 2, ... on disk; everything else on the CPU."""
    text = "model.language_model"
    out = {f"model.{name}": "cpu" for name, _ in hf.model.named_children() if name != "language_model"}
    for name, child in hf.get_submodule(text).named_children():
        if name == "layers":
            out |= {f"{text}.layers.{i}": "disk" if i % 2 == 0 else "cpu" for i in range(len(child))}
        else:
            out[f"{text}.{name}"] = "cpu"
    return out | {"lm_head": "cpu"}


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_offloaded_layers_give_the_same_results(family, tmp_path):
    hf, processor = tiny_hf(family)
    hf.save_pretrained(tmp_path / "model")
    save_processor(processor, tmp_path / "model")
    plain = HookedVLM.from_pretrained(tmp_path / "model")
    off = HookedVLM.from_pretrained(tmp_path / "model", device_map=_device_map(hf), offload_folder=tmp_path / "off")
    assert any(p.device.type == "meta" for p in off.hf_model.parameters())
    batch = plain.prepare(tiny_images(2, seed=8), ["Is there a cat in the image?", "Is there a dog?"])
    assert torch.equal(off.forward(batch), plain.forward(batch))
    sites = [f"text.blocks.{layer}.attn.hook_result" for layer in range(plain.n_layers)]
    _, a = run_with_cache(plain, batch, sites=sites)
    _, b = run_with_cache(off, batch, sites=sites)
    for site in sites:
        torch.testing.assert_close(b[site], a[site], atol=1e-6, rtol=1e-5)
    edit = [Ablate(site="text.blocks.0.attn.hook_result", heads=(1,)), Ablate(site="text.blocks.1.hook_mlp_out")]
    torch.testing.assert_close(run(off, batch, edit), run(plain, batch, edit), atol=1e-6, rtol=1e-5)
    # Generation with an edit at every step: the KV cache of an offloaded layer, and the edit, carry over.
    kv = [Ablate(site="text.blocks.0.attn.hook_v", heads=(0,))]
    wanted, got = plain.generate(batch, max_new_tokens=4, interventions=kv), off.generate(batch, 4, interventions=kv)
    assert got.token_ids.tolist() == wanted.token_ids.tolist()
    torch.testing.assert_close(got.scores, wanted.scores, atol=1e-5, rtol=1e-5)


def test_weight_reading_analyses_say_so_on_offloaded_weights(tmp_path):
    from vlmlens.errors import InputError
    from vlmlens.ops import logit_lens

    hf, processor = tiny_hf("llava")
    hf.save_pretrained(tmp_path / "model")
    save_processor(processor, tmp_path / "model")
    device_map = _device_map(hf) | {"lm_head": "disk", "model.language_model.norm": "disk"}
    off = HookedVLM.from_pretrained(tmp_path / "model", device_map=device_map, offload_folder=tmp_path / "off")
    plain = HookedVLM.from_pretrained(tmp_path / "model")
    batch = off.prepare(tiny_images(1, seed=8), ["Is there a cat in the image?"])
    _, cache = off.run_with_cache(batch, positions="last")
    with pytest.raises(InputError, match="offloaded"):
        cache.logit_attrs(cache.decompose_resid(), 5, 7)
    with pytest.raises(InputError, match="offloaded"):
        _ = off.W_out
    assert off.cfg == plain.cfg  # cfg reads shapes only
    lens, want = logit_lens(off, batch, tokens=[5, 7]), logit_lens(plain, batch, tokens=[5, 7])
    torch.testing.assert_close(lens.logits, want.logits, atol=1e-6, rtol=1e-6)
