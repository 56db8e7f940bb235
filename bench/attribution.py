"""Cost of attribution patching (AtP) vs one plain forward and vs exact activation patching.

A random LLaVA-1.5-architecture model (CLIP-336/14 vision tower with 2 of its 24 layers, a
Llama text model of --layers x --width instead of 32 x 4096, the real processor and image
size, so ~600 tokens with 576 image tokens), fp32, transformers' default attention (SDPA).
In one process it times:

* the plain Hugging Face forward of the corrupt prompt on an untouched copy of the model
  (no vlmlens hooks, HF's own SDPA kernel), the baseline;
* ``attribute_residual`` over every (layer, position) ``resid_pre`` site: two forwards and
  one backward (goal <= 4x the plain forward);
* exact ``patch_residual`` of a subset of the same sites (``--exact-positions`` positions x
  every layer, batched ``--chunk`` patches per forward), extrapolated per site to all of them,
  for the speed-up of AtP over exact patching;
* ``attribute_edges`` (EAP: three forwards and one backward) with block receivers and with
  per-head receivers (each head's query, key and value), as multiples of the plain forward.

    python bench/attribution.py [--layers 6] [--width 768] [--repeats 3] [--exact-positions 8]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import transformers
from overhead import timed  # bench/ is on the path when run as a script
from transformers import LlavaForConditionalGeneration

from vlmlens import HookedVLM
from vlmlens.ops import attribute_edges, attribute_residual, logit_diff, patch_residual
from vlmlens.real_shapes import real_shape_config, real_shape_processor
from vlmlens.testing import tiny_images


def build(layers: int, width: int) -> tuple[HookedVLM, torch.nn.Module]:
    """The hooked model and an untouched copy of the same HF model (the baseline)."""
    processor = real_shape_processor("llava")
    config = real_shape_config("llava", processor.tokenizer, text_layers=layers, vision_layers=2)
    text = config.text_config
    text.hidden_size, text.intermediate_size = width, width * 11 // 4
    text.num_attention_heads = text.num_key_value_heads = width // 64
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    plain = copy.deepcopy(model)
    return HookedVLM.from_hf(model, processor), plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exact-positions", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model, hf = build(args.layers, args.width)
    images = tiny_images(2, size=336, seed=3)
    question = "Is there a cat in the image?"
    clean, corrupt = model.prepare([images[0]], [question]), model.prepare([images[1]], [question])
    tok = model.tokenizer
    metric = logit_diff(tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
    n_params = sum(p.numel() for p in hf.parameters())
    seq = corrupt.layout.seq_len
    print(f"model: LLaVA-1.5 architecture, text {args.layers} x {args.width}, vision 2 x 1024 (CLIP-336/14), "
          f"{n_params / 1e6:.0f}M parameters, baseline attention={hf.config.text_config._attn_implementation}, "
          f"{seq} tokens, torch threads={torch.get_num_threads()}")

    def plain() -> None:
        with torch.no_grad():
            hf(**corrupt.inputs)

    plain()  # warm-up
    t_plain = timed(plain, args.repeats)
    t_atp = timed(lambda: attribute_residual(model, clean, corrupt, metric), args.repeats)
    n_sites = args.layers * seq
    subset = list(range(seq - args.exact_positions, seq))
    start = time.perf_counter()
    patch_residual(model, clean, corrupt, metric, positions=subset, chunk_size=args.chunk)
    t_subset = time.perf_counter() - start
    t_exact = t_subset / (args.layers * len(subset)) * n_sites
    print(f"plain HF forward (SDPA):              {t_plain:8.3f} s")
    print(f"AtP, all {n_sites} resid_pre sites:      {t_atp:8.3f} s   = {t_atp / t_plain:.2f}x the plain forward "
          f"(goal <= 4x)")
    print(f"exact patching, {args.layers * len(subset)} sites measured: {t_subset:8.3f} s; all {n_sites} sites "
          f"extrapolated: {t_exact:8.1f} s   AtP speed-up {t_exact / t_atp:.0f}x")
    for grain in ("blocks", "heads"):
        edges = attribute_edges(model, clean, corrupt, metric, receivers=grain)
        t_eap = timed(lambda grain=grain: attribute_edges(model, clean, corrupt, metric, receivers=grain), args.repeats)
        print(f"EAP, {grain} receivers ({len(edges.senders)} x {len(edges.receivers)} edges): {t_eap:8.3f} s   = "
              f"{t_eap / t_plain:.2f}x the plain forward")


if __name__ == "__main__":
    main()
