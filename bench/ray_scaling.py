"""Throughput of the Ray paths: 2 actors vs 1, each single-threaded, on the CPU.

``--job store``: writes every text ``resid_post`` (last position) of SynthPOPE questions
with ``write_store_ray`` from a zoo model. Each actor also prepares its next batch on a
second thread, so a 2x ratio needs about four free cores.
``--job vrp``: the VRP's per-sample pass (greedy + K samples, attention maps, logit lens,
masking sweep, feature shards; ``VRPConfig`` defaults) on Ray actors, as
``vlmlens.vrp.run_ray`` runs it. The analysis that follows runs in the driver without a model
and does not scale with actors; on the toy zoo it takes longer than the pass itself.

Each runs once with one actor and once with two (one torch thread each), interleaved over
``--repeats`` rounds, into fresh folders. Times are whole calls, actor start and model
loading included, as a user sees them.

    python bench/ray_scaling.py [--job store|vrp] [--model toy-llava] [--samples 96] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import ray
import transformers

from vlmlens import HookedVLM, Point, Site, Tower
from vlmlens.data import synth_pope
from vlmlens.ops import write_store_ray
from vlmlens.ray_pool import ActorPool, RayConfig, ray_session
from vlmlens.vrp.batches import RayBatches
from vlmlens.vrp.config import VRPConfig
from vlmlens.vrp.pipeline import run_samples
from vlmlens.vrp.store import SampleStore


def text_resid(site: Site) -> bool:
    return site.tower is Tower.TEXT and site.point is Point.RESID_POST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="store", choices=["store", "vrp"])
    parser.add_argument("--model", default="toy-llava")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    data = synth_pope("adversarial", n_images=args.samples // 6 + 1, seed=0).subset(args.samples)
    factory = functools.partial(HookedVLM.from_pretrained, args.model)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        for _ in range(args.repeats):
            for workers in (1, 2):
                config = RayConfig(workers=workers, threads=1)
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    if args.job == "store":
                        write_store_ray(factory, data, out, sites=text_resid, batch_size=args.batch_size,
                                        config=config)
                    else:
                        with (ray_session(ray, workers, config) as fit,
                              ActorPool(ray, factory, config, size=fit) as pool):
                            run_samples(RayBatches(pool), data, VRPConfig(batch_size=args.batch_size),
                                        SampleStore(Path(out)), progress=False)
                    times[workers].append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"{args.job}: {args.model}, {args.samples} SynthPOPE questions, batch {args.batch_size}, median of {args.repeats}")
    print(f"1 actor  (1 thread)  {one:7.1f} s  {args.samples / one:6.1f} samples/s")
    print(f"2 actors (1 thread)  {two:7.1f} s  {args.samples / two:6.1f} samples/s  {one / two:.2f}x the throughput")


if __name__ == "__main__":
    main()
