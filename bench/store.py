"""Activation-store throughput vs a plain batched forward over the same batches, in one process.

Writes every text ``resid_post`` (last prompt position) of ~64 SynthPOPE questions to an
activation store with ``write_store`` and compares samples/second with a loop that
prepares and runs ``model.forward`` over the same batches (images are rendered once,
before timing, and shared). Also shown: the forward alone on pre-built batches.
Goal: the store takes <= 1.3x the prepare + forward loop's time. On a machine shared with
other jobs, ``--threads 1`` avoids thread oversubscription and gives steadier numbers.

    python bench/store.py [--family llava] [--samples 64] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import transformers
from common import Preloaded  # bench/ is on the path when run as a script

from vlmlens import Point, Site, Tower
from vlmlens.ops import write_store
from vlmlens.testing import tiny_vlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava", choices=["llava", "paligemma", "qwen2_vl"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = tiny_vlm(args.family)
    data = Preloaded(args.samples)
    size = args.batch_size
    chunks = [data.items[i : i + size] for i in range(0, len(data.items), size)]
    prepared = [model.prepare([data.image(i) for i in c], [i.text for i in c]) for c in chunks]

    def sites(site: Site) -> bool:
        return site.tower is Tower.TEXT and site.point is Point.RESID_POST

    def forward_only() -> None:
        for batch in prepared:
            model.forward(batch)

    def prepare_forward() -> None:
        for c in chunks:
            model.forward(model.prepare([data.image(i) for i in c], [i.text for i in c]))

    def store() -> None:
        with tempfile.TemporaryDirectory() as out:
            write_store(model, data, out, sites=sites, positions="last", batch_size=size, shard_size=32,
                        progress=False)

    for fn in (forward_only, prepare_forward, store):  # warm up
        fn()
    # Interleave the variants so a change in machine load hits all of them alike.
    times: dict[str, list[float]] = {"forward_only": [], "prepare_forward": [], "store": []}
    for _ in range(args.repeats):
        for name, fn in (("forward_only", forward_only), ("prepare_forward", prepare_forward), ("store", store)):
            times[name].append(_time(fn))
    n = len(data.items)
    print(f"{args.family} tiny model, {n} samples, batch {size}, {model.n_layers} resid_post sites at the last "
          f"position, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    for stat, reduce in (("median", statistics.median), ("best", min)):
        t = {name: reduce(v) for name, v in times.items()}
        print(f"[{stat}] forward only (batches pre-built)  {n / t['forward_only']:8.1f} samples/s")
        print(f"[{stat}] prepare + forward                 {n / t['prepare_forward']:8.1f} samples/s  1.00x")
        print(f"[{stat}] write_store                       {n / t['store']:8.1f} samples/s  "
              f"{t['store'] / t['prepare_forward']:.2f}x time (goal <= 1.3); "
              f"{t['store'] / t['forward_only']:.2f}x the forward alone")


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
