"""Overhead of HookedVLM tracing vs the plain Hugging Face forward, measured in one process.

A random LLaVA-architecture model (~100M parameters: Llama 12x768 text, CLIP-336/14
vision tower) on a ~600-token input (576 image tokens + prompt), fp32 CPU. Prints the
median time of each variant and its ratio to the plain forward (eager attention, no hooks).
Goals: traced forward <= 1.05x, caching every text resid_post <= 1.15x.

    python bench/overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from vlmlens import HookedVLM, Point, Tower
from vlmlens.ops import run_with_cache


def build() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                       num_attention_heads=4, image_size=336, patch_size=14),
        text_config=LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                num_attention_heads=12, num_key_value_heads=12, vocab_size=32064),
        image_token_index=32000,
    )
    config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(config).eval()
    ids = torch.randint(0, 31999, (1, 600))
    ids[0, 5:581] = 32000
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 336, 336)}
    return model, inputs


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    plain, inputs = build()
    hooked = HookedVLM.from_hf(copy.deepcopy(plain), processor=None, check=False)
    n_params = sum(p.numel() for p in plain.parameters()) / 1e6

    def run_plain() -> None:
        with torch.no_grad():
            plain(**inputs)

    def run_traced() -> None:
        with torch.no_grad(), hooked.trace(inputs):
            pass

    def run_cache() -> None:
        run_with_cache(hooked, inputs, sites=lambda s: s.tower is Tower.TEXT and s.point is Point.RESID_POST)

    times: dict[str, list[float]] = {"plain": [], "traced": [], "cache": []}
    for fn in (run_plain, run_traced, run_cache):  # warm up
        fn()
    for _ in range(args.repeats):  # interleaved, so load from elsewhere hits all variants alike
        for key, fn in (("plain", run_plain), ("traced", run_traced), ("cache", run_cache)):
            times[key].append(timed(fn, 1))
    base, traced, cached = (statistics.median(times[k]) for k in ("plain", "traced", "cache"))
    print(f"model: {n_params:.0f}M parameters, {inputs['input_ids'].shape[1]} tokens, fp32 CPU, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"plain HF forward (eager)      {base * 1000:8.1f} ms  1.000x")
    print(f"HookedVLM traced, no saves    {traced * 1000:8.1f} ms  {traced / base:.3f}x  (goal <= 1.05)")
    print(f"cache every text resid_post   {cached * 1000:8.1f} ms  {cached / base:.3f}x  (goal <= 1.15)")


if __name__ == "__main__":
    main()
