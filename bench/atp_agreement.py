"""Does attribution patching agree with exact activation patching on the trained toy zoo?

For N SynthPOPE pairs per toy (the same question over an image that shows the object,
clean, and one that does not, corrupt), compares the AtP estimate with exact patching of
every (layer, position) residual site (``resid_pre``) and of every head (``z``), as
effects on the yes-no logit difference (value minus the corrupt run's). Prints Pearson r
per family over all cells of all pairs.

    python bench/atp_agreement.py [--pairs 20] [--models toy-llava toy-paligemma toy-qwen2vl]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
import transformers

from vlmlens import HookedVLM
from vlmlens.data import synth_pope
from vlmlens.ops import attribute_heads, attribute_residual, logit_diff, patch_heads, patch_residual


def pairs(n: int, seed: int = 11):
    ds = synth_pope("random", n_images=max(40, 4 * n), seed=seed)
    by_question = defaultdict(lambda: {"yes": [], "no": []})
    for index, item in enumerate(ds.items):
        by_question[item.text][item.label].append(index)
    out = []
    for question, groups in by_question.items():
        for yes, no in zip(groups["yes"], groups["no"]):
            out.append((question, ds.image(yes), ds.image(no)))
    return out[:n]


def effects(result) -> np.ndarray:
    return (result.values - result.corrupt_metric).flatten().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["toy-llava", "toy-paligemma", "toy-qwen2vl"])
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_grad_enabled(True)
    chosen = pairs(args.pairs)
    for name in args.models:
        model = HookedVLM.from_pretrained(name)
        tok = model.tokenizer
        metric = logit_diff(tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
        cells = {"resid": ([], []), "heads z": ([], [])}
        for question, yes_image, no_image in chosen:
            clean, corrupt = model.prepare([yes_image], [question]), model.prepare([no_image], [question])
            if clean.layout.seq_len != corrupt.layout.seq_len:
                continue
            for key, atp_fn, exact_fn in (("resid", attribute_residual, patch_residual),
                                          ("heads z", attribute_heads, patch_heads)):
                cells[key][0].append(effects(atp_fn(model, clean, corrupt, metric)))
                cells[key][1].append(effects(exact_fn(model, clean, corrupt, metric, chunk_size=16)))
        for key, (atp, exact) in cells.items():
            a, e = np.concatenate(atp), np.concatenate(exact)
            r = float(np.corrcoef(a, e)[0, 1])
            print(f"{name:14s} {key:8s} pairs={len(atp):3d} cells={a.size:6d} Pearson r={r:.3f}")


if __name__ == "__main__":
    main()
