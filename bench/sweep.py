"""Condition sweeps vs a one-condition-per-forward loop, measured in one process.

Prints conditions/second of `vlmlens.ops.sweep` (16 conditions stacked along the batch
axis) against running the same 16 conditions one forward each, on the same tiny-zoo-sized
model and batch. Goal: >= 4x at 16 conditions.

    python bench/sweep.py [--family llava] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import transformers

from vlmlens.ops import Ablate, run_with_interventions, sweep
from vlmlens.testing import tiny_images, tiny_vlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava", choices=["llava", "paligemma", "qwen2_vl"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    model = tiny_vlm(args.family)
    batch = model.prepare(tiny_images(4), ["Is there a cat in the image?"] * 4)
    conditions = [[Ablate(site=f"text.blocks.{i % model.n_layers}.attn.hook_z", heads=(i % model.n_heads,))]
                  for i in range(16)]

    def loop() -> None:
        for condition in conditions:
            run_with_interventions(model, batch, condition)

    def stacked() -> None:
        sweep(model, batch, conditions, chunk_size=16)

    loop(), stacked()
    t_loop = statistics.median(_time(loop) for _ in range(args.repeats))
    t_sweep = statistics.median(_time(stacked) for _ in range(args.repeats))
    n = len(conditions)
    print(f"{args.family} tiny model, batch of {len(batch)}, {n} conditions, median of {args.repeats}")
    print(f"one forward per condition  {n / t_loop:8.1f} conditions/s")
    print(f"sweep (stacked)            {n / t_sweep:8.1f} conditions/s  {t_loop / t_sweep:.2f}x (goal >= 4)")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
