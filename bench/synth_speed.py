"""Benchmark: SynthPOPE generation + rendering of a full POPE-sized split.

Generates 500 images / 3000 questions at 64x64 (the defaults), renders every image,
and, with --export, writes the PNG export to a temporary folder. Prints wall times and
their ratio to a same-process baseline (drawing Gaussian noise into 500 arrays of the
same shape, the least any renderer must do). Budget: generate + render < 30 s on one core.

    python bench/synth_speed.py [--images 500] [--size 64] [--split adversarial] [--export]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from vlmlens.data import synth_pope

BUDGET_S = 30.0


def _baseline(n: int, size: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        rng = np.random.default_rng([0, i])
        img = np.full((size, size, 3), 128.0) + rng.normal(0.0, 10.0, (size, size, 3))
        np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--split", default="adversarial", choices=("random", "popular", "adversarial"))
    parser.add_argument("--export", action="store_true", help="also time writing PNGs + JSON")
    args = parser.parse_args()

    base = _baseline(args.images, args.size)
    t0 = time.perf_counter()
    ds = synth_pope(args.split, args.images, image_size=args.size)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in ds.image_names:
        ds.array(name)
    t_render = time.perf_counter() - t0
    total = t_gen + t_render
    print(f"SynthPOPE {args.split}: {len(ds)} questions, {len(ds.image_names)} images of {args.size}x{args.size}")
    print(f"  baseline (noise-only images): {base:8.3f} s")
    print(f"  generate (scenes + questions): {t_gen:7.3f} s")
    print(f"  render (all images):           {t_render:7.3f} s  ({t_render / max(base, 1e-9):.1f}x baseline)")
    if args.export:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            ds.export(d)
            print(f"  export (PNG + JSON):           {time.perf_counter() - t0:7.3f} s")
    verdict = "OK" if total < BUDGET_S else "OVER BUDGET"
    print(f"  generate + render:             {total:7.3f} s  (budget {BUDGET_S:.0f} s: {verdict})")
    return 0 if total < BUDGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
