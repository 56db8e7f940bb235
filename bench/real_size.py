"""Every benchmark ratio against plain transformers, per family, at a chosen size, in one process.

For each family this builds the model at ``--scale`` (``full``: the real checkpoint's
architecture at its published depth with random weights, for a GPU; ``reduced``: 2 text and
2 vision blocks at real widths; ``tiny``: the 2-layer test models, what CI runs on CPU) and
times, against the plain HF model with its default SDPA attention (an untouched copy, no
vlmlens code in it):

* ``golden``: with no edit, logits equal the plain model's; a head's zero-ablation equals the
  same edit written by hand on the plain model (max absolute differences; 0 is exact);
* ``forward``: ``HookedVLM.forward`` (hooks installed, nothing observing them), an nnsight
  trace with nothing saved, and caching every text ``resid_post`` at
  every position to the host, vs one plain forward of the same batch (goals <= 1.05x, <= 1.15x);
* ``sweep``: 16 head-ablation conditions stacked by ``vlmlens.ops.sweep`` vs the same 16
  conditions one edited forward each, and vs 16 plain forwards (answer logits only in all three);
* ``atp``: attribution patching of every (layer, position) ``resid_pre`` (two forwards and a
  backward) vs one plain forward (goal <= 4x);
* ``consistency``: greedy + K=10 samples from one prefill vs HF ``generate`` greedy (<= 2.5x)
  and with ``num_return_sequences=10`` (<= 0.5x), greedy rows compared, one row per token
  budget of ``--consistency-tokens`` (``consistency.py``);
* ``store``: ``write_store`` of every text ``resid_post`` at the last position over SynthPOPE
  questions vs a bare batched plain forward over pre-built batches, answer logits only in both
  (goal <= 1.3x); with
  ``--store-workers N`` also with N input-processing processes.

Results go to ``--out`` (one JSON line per family and part, written as each finishes) and to
stdout as a table. A part that fails is recorded with its error and the rest go on.

    python bench/real_size.py --scale full --device cuda --dtype bfloat16 --out real_size.jsonl
    python bench/real_size.py --scale tiny --repeats 1             # the CPU check CI runs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from common import (
    FAMILIES,
    IMAGE_SIDE,
    Preloaded,
    build,
    interleaved,
    n_params,
    synchronize,
)
from consistency import TOKENS
from consistency import measure as measure_consistency

from vlmlens import Point, Site, Tower
from vlmlens.ops import (
    Ablate,
    attribute_residual,
    logit_diff,
    run_with_cache,
    run_with_interventions,
    sweep,
    write_store,
)
from vlmlens.testing import tiny_images

QUESTION = "Is there a cat in the image?"


def text_resid(site: Site) -> bool:
    return site.tower is Tower.TEXT and site.point is Point.RESID_POST


def part_forward(model: Any, plain: torch.nn.Module, batch: Any, repeats: int) -> dict[str, Any]:
    def run_plain() -> None:
        with torch.no_grad():
            plain(**batch.inputs)

    def run_hooked() -> None:
        model.forward(batch)

    def run_traced() -> None:
        with torch.no_grad(), model.trace(batch):
            pass

    def run_cache() -> None:
        run_with_cache(model, batch, sites=text_resid)

    t = interleaved({"plain": run_plain, "hooked": run_hooked, "traced": run_traced, "cache": run_cache}, repeats,
                    model.device)
    return {"plain_s": t["plain"], "hooked_s": t["hooked"], "traced_s": t["traced"], "cache_s": t["cache"],
            "hooked_ratio": t["hooked"] / t["plain"], "traced_ratio": t["traced"] / t["plain"],
            "cache_ratio": t["cache"] / t["plain"]}


def part_golden(model: Any, plain: torch.nn.Module, batch: Any, repeats: int) -> dict[str, Any]:
    """Fidelity at this size and dtype: no edit vs plain HF, and one head's zero-ablation vs the
    same edit written by hand (a pre-hook on the plain model's ``o_proj`` zeroing the head's slice)."""
    layer, head = model.n_layers // 2, model.n_heads - 1
    d_head = model.text_config.head_dim if getattr(model.text_config, "head_dim", None) else (
        model.d_model // model.n_heads)
    with torch.no_grad():
        reference = plain(**batch.inputs).logits
        clean = model.forward(batch)
        edited = run_with_interventions(model, batch, [Ablate(site=model.text.z[layer], heads=(head,))])

        def zero_head(module: torch.nn.Module, args: tuple) -> tuple:
            x = args[0].clone()
            x[..., head * d_head : (head + 1) * d_head] = 0
            return (x, *args[1:])

        o_proj = plain.model.language_model.layers[layer].self_attn.o_proj
        handle = o_proj.register_forward_pre_hook(zero_head)
        try:
            by_hand = plain(**batch.inputs).logits
        finally:
            handle.remove()
    return {"clean_max_abs": float((clean.to(reference.device) - reference).abs().max()),
            "ablate_max_abs": float((edited.to(by_hand.device) - by_hand).abs().max()),
            "ablation_effect_max_abs": float((by_hand - reference).abs().max())}


def part_sweep(model: Any, plain: torch.nn.Module, batch: Any, repeats: int) -> dict[str, Any]:
    conditions = [[Ablate(site=model.text.z[i % model.n_layers], heads=(i % model.n_heads,))] for i in range(16)]

    def stacked() -> None:
        sweep(model, batch, conditions, chunk_size=16, last=True)

    def loop() -> None:  # one edited forward per condition, answer logits only like the sweep
        for condition in conditions:
            sweep(model, batch, [condition], chunk_size=1, last=True)

    def plain16() -> None:
        with torch.no_grad():
            for _ in conditions:
                plain(**batch.inputs, logits_to_keep=1)

    t = interleaved({"sweep": stacked, "loop": loop, "plain16": plain16}, repeats, model.device)
    return {"conditions": 16, "sweep_s": t["sweep"], "loop_s": t["loop"], "plain16_s": t["plain16"],
            "speedup_vs_loop": t["loop"] / t["sweep"], "ratio_vs_plain16": t["sweep"] / t["plain16"]}


def part_atp(model: Any, plain: torch.nn.Module, side: int, repeats: int) -> dict[str, Any]:
    images = tiny_images(2, size=side, seed=3)
    clean, corrupt = model.prepare([images[0]], [QUESTION]), model.prepare([images[1]], [QUESTION])
    tok = model.tokenizer
    metric = logit_diff(tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))

    def run_plain() -> None:
        with torch.no_grad():
            plain(**corrupt.inputs)

    def run_atp() -> None:
        attribute_residual(model, clean, corrupt, metric)

    t = interleaved({"plain": run_plain, "atp": run_atp}, repeats, model.device)
    return {"sites": model.n_layers * corrupt.layout.seq_len, "plain_s": t["plain"], "atp_s": t["atp"],
            "ratio": t["atp"] / t["plain"]}


def part_store(model: Any, plain: torch.nn.Module, side: int, samples: int, batch_size: int, workers: int,
               repeats: int) -> dict[str, Any]:
    data = Preloaded(samples, max(side, 64))  # SynthPOPE draws objects of >= 6 px
    chunks = [data.items[i : i + batch_size] for i in range(0, len(data.items), batch_size)]
    prepared = [model.prepare([data.image(i) for i in c], [i.text for i in c]) for c in chunks]

    def bare() -> None:  # the answer position's logits only, as the store computes
        with torch.no_grad():
            for batch in prepared:
                plain(**batch.inputs, logits_to_keep=1)

    def store(workers: int = 0) -> None:
        with tempfile.TemporaryDirectory() as out:
            write_store(model, data, out, sites=text_resid, positions="last", batch_size=batch_size,
                        shard_size=256, progress=False, workers=workers)

    variants = {"bare": bare, "store": store} | ({"store_workers": lambda: store(workers)} if workers else {})
    t = interleaved(variants, repeats, model.device)
    row = {"samples": samples, "batch": batch_size, "bare_s": t["bare"], "store_s": t["store"],
           "ratio": t["store"] / t["bare"], "workers": workers}
    if workers:
        row |= {"store_workers_s": t["store_workers"], "workers_ratio": t["store_workers"] / t["bare"]}
    return row


def run_family(family: str, args: argparse.Namespace, dtype: torch.dtype, write: Callable[[dict], None]) -> None:
    start = time.perf_counter()
    model, plain = build(family, args.scale, device=args.device, dtype=dtype)
    side = IMAGE_SIDE[args.scale]
    batch = model.prepare(tiny_images(1, size=side, seed=1), [QUESTION])
    write({"family": family, "part": "model", "params_m": n_params(plain) / 1e6, "text_layers": model.n_layers,
           "vision_layers": model.n_vision_layers, "tokens": batch.layout.seq_len,
           "attention": plain.config.text_config._attn_implementation, "build_s": time.perf_counter() - start})
    parts: dict[str, Callable[[], dict[str, Any] | list[dict[str, Any]]]] = {
        "golden": lambda: part_golden(model, plain, batch, args.repeats),
        "forward": lambda: part_forward(model, plain, batch, args.repeats),
        "sweep": lambda: part_sweep(model, plain, batch, args.repeats),
        "atp": lambda: part_atp(model, plain, side, args.repeats),
        "consistency": lambda: [measure_consistency(model, plain, side=side, batch_size=args.batch_size,
                                                    tokens=tokens, repeats=args.repeats)
                                for tokens in args.consistency_tokens],
        "store": lambda: part_store(model, plain, side, args.samples, args.batch_size, args.store_workers,
                                    args.repeats),
    }
    for name in args.parts:
        start = time.perf_counter()
        try:
            result = parts[name]()
        except Exception as err:  # noqa: BLE001 -- a benchmark records a failed part and goes on
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=6)}
        synchronize(args.device)
        for row in result if isinstance(result, list) else [result]:
            write({"family": family, "part": name, **row, "wall_s": time.perf_counter() - start})


LINES = {
    "model": ("{family}: {params_m:.1f}M parameters, {text_layers} text / {vision_layers} vision blocks, {tokens} "
              "tokens, {attention} attention, built in {build_s:.1f} s"),
    "golden": ("  golden       no edit vs plain HF: max |diff| {clean_max_abs:.3g} | head ablation vs by hand: "
               "{ablate_max_abs:.3g} (the edit moves logits by up to {ablation_effect_max_abs:.3g})"),
    "forward": ("  forward      plain {plain_ms:8.1f} ms | HookedVLM.forward {hooked_ratio:.3f}x | nnsight trace "
                "{traced_ratio:.3f}x (<= 1.05) | cache resid_post {cache_ratio:.3f}x (<= 1.15)"),
    "sweep": ("  sweep x16    {sweep_ms:8.1f} ms | {speedup_vs_loop:.2f}x faster than a loop of 16 edited forwards | "
              "{ratio_vs_plain16:.2f}x the time of 16 plain forwards"),
    "atp": "  AtP          {atp_ms:8.1f} ms for {sites} sites | {ratio:.2f}x one plain forward (<= 4)",
    "consistency": ("  consistency  {shared_ms:8.1f} ms, up to {tokens} tokens | {vs_greedy:.2f}x HF greedy generate (<= 2.5) | {vs_hf_k:.2f}x "
                    "HF num_return_sequences={k} (<= 0.5) | greedy identical: {greedy_identical}"),
    "store": ("  store        {store_ms:8.1f} ms for {samples} samples | {ratio:.2f}x a bare batched plain forward "
              "(<= 1.3){with_workers}"),
}
"""How each part's row is printed (times in milliseconds)."""


def line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"  {row['part']:12s} FAILED: {row['error']}"
    ms = {f"{key[:-2]}_ms": value * 1e3 for key, value in row.items() if key.endswith("_s")}
    extra = {"with_workers": f" | with {row['workers']} worker processes {row['workers_ratio']:.2f}x"
             if row.get("workers") else ""}
    return LINES[row["part"]].format_map({**row, **ms, **extra})


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="tiny", choices=sorted(IMAGE_SIDE))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parts = ["golden", "forward", "sweep", "atp", "consistency", "store"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--consistency-tokens", type=int, nargs="+", default=list(TOKENS),
                        help="token budgets of the consistency part (one row each)")
    parser.add_argument("--samples", type=int, default=64, help="questions written by the store part")
    parser.add_argument("--store-workers", type=int, default=0,
                        help="also time write_store with this many input-processing processes")
    parser.add_argument("--out", default=None, help="append one JSON line per result here")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32)
    rows: list[dict[str, Any]] = []
    header = (f"scale {args.scale}, {dtype}, {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
                                  f", {torch.get_num_threads()} threads") + f", median of {args.repeats}")
    print(header, flush=True)

    def write(row: dict[str, Any]) -> None:
        row = {"scale": args.scale, "dtype": str(dtype), "device": args.device, **row}
        rows.append(row)
        print(line(row), flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(row) + "\n")

    for family in args.families:
        try:
            run_family(family, args, dtype, write)
        except Exception as err:  # noqa: BLE001 -- e.g. out of memory building one family
            write({"family": family, "part": "model", "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=6)})
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()  # the family's models are gone with run_family's frame
    return rows


if __name__ == "__main__":
    main()
