"""Overhead of HookedVLM tracing vs the plain Hugging Face forward, measured in one process.

A random LLaVA-architecture model (~100M parameters: Llama 12x768 text, CLIP-336/14
vision tower) on a ~600-token input (576 image tokens + prompt), fp32 CPU. Prints the
median time of each variant and its ratio to the plain forward with the same attention
kernel: SDPA (what transformers loads by default, so what users compare against) and,
side by side, eager. Goals (vs SDPA): traced forward <= 1.05x, caching every text
resid_post <= 1.15x.

    python bench/overhead.py [--repeats 7] [--small]
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


def build(small: bool = False) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    layers, width = (2, 128) if small else (12, 768)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2 if small else 4,
                                       num_attention_heads=4, image_size=336, patch_size=14),
        text_config=LlamaConfig(hidden_size=width, intermediate_size=width * 8 // 3, num_hidden_layers=layers,
                                num_attention_heads=width // 64, num_key_value_heads=width // 64, vocab_size=32064),
        image_token_index=32000,
    )
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


def with_kernel(model: torch.nn.Module, kernel: str) -> torch.nn.Module:
    model = copy.deepcopy(model)
    for cfg in (model.config, model.config.text_config, model.config.vision_config):
        cfg._attn_implementation = kernel
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="a 2-layer model (a quick check that it runs)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    model, inputs = build(args.small)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    text_resid = lambda s: s.tower is Tower.TEXT and s.point is Point.RESID_POST  # noqa: E731
    variants = {}
    for kernel in ("sdpa", "eager"):
        plain = with_kernel(model, kernel)
        hooked = HookedVLM.from_hf(with_kernel(model, kernel), processor=None, check=False)

        def run_plain(plain: torch.nn.Module = plain) -> None:
            with torch.no_grad():
                plain(**inputs)

        def run_traced(hooked: HookedVLM = hooked) -> None:
            with torch.no_grad(), hooked.trace(inputs):
                pass

        def run_cache(hooked: HookedVLM = hooked) -> None:
            run_with_cache(hooked, inputs, sites=text_resid)

        variants |= {f"plain {kernel}": run_plain, f"traced {kernel}": run_traced, f"cache {kernel}": run_cache}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm up
        fn()
    for _ in range(args.repeats):  # interleaved, so load from elsewhere hits all variants alike
        for key, fn in variants.items():
            times[key].append(timed(fn, 1))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {n_params:.0f}M parameters, {inputs['input_ids'].shape[1]} tokens, fp32 CPU, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for kernel in ("sdpa", "eager"):
        base = median[f"plain {kernel}"]
        print(f"plain HF forward ({kernel:5s})       {base * 1000:8.1f} ms  1.000x")
        for key, label, goal in (("traced", "HookedVLM traced, no saves", "1.05"),
                                 ("cache", "cache every text resid_post", "1.15")):
            t = median[f"{key} {kernel}"]
            print(f"  {label:28s} {t * 1000:8.1f} ms  {t / base:.3f}x vs plain {kernel} (goal <= {goal})")
    print(f"eager / sdpa plain forward: {median['plain eager'] / median['plain sdpa']:.3f}x")


if __name__ == "__main__":
    main()
