"""Does attribution patching agree with exact activation patching on the trained toy zoo?

For N SynthPOPE pairs per toy (the same question over an image that shows the object,
clean, and one that does not, corrupt), compares the AtP estimate with exact patching of
every (layer, position) residual site (``resid_pre``) and of every head (``z``, and ``q``
and ``k`` with and without AtP*'s QK fix; residual and ``z`` also with integrated gradients
along the inputs, ``ig_steps``), and the top EAP and EAP-IG edges with exact edge patching,
as effects on the yes-no logit difference
(each side the logsumexp over "Yes" and "yes", "No" and "no"; value minus the corrupt
run's). Prints Pearson r per family over all cells of all pairs.

Pairs are fixed before any attribution is computed: SynthPOPE "random" questions in
dataset order, kept when the toy answers both images correctly (logit difference > 0 on
the clean image, < 0 on the corrupt one; a patching experiment needs an effect to
explain), until N pairs per toy. ``--all-pairs`` keeps every pair instead.

    python bench/atp_agreement.py [--pairs 20] [--ig-steps 8] [--models toy-llava toy-paligemma toy-qwen2vl]
    python bench/atp_agreement.py --skip-nodes --receivers heads   # edges into each head's q / k / v

Also prints, per family, how redundant the residual effects are: the sum over positions
of the single-position exact effects at layer 0, divided by the whole effect (clean minus
corrupt). Above 1, several positions each carry the whole effect (an OR), which no
additive estimate (AtP, integrated gradients) can reproduce cell by cell.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
import transformers

from vlmlens import HookedVLM
from vlmlens.data import synth_pope
from vlmlens.ops import (
    attribute_edges,
    attribute_heads,
    attribute_residual,
    logit_diff,
    patch_edge,
    patch_heads,
    patch_residual,
)


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
    parser.add_argument("--all-pairs", action="store_true", help="keep pairs the toy gets wrong too")
    parser.add_argument("--pool", type=int, default=200, help="candidate pairs to draw the N pairs from")
    parser.add_argument("--edges", type=int, default=10, help="top EAP edges per pair checked by exact edge patching")
    parser.add_argument("--edge-pairs", type=int, default=5, help="pairs for the edge check")
    parser.add_argument("--skip-nodes", action="store_true", help="only the edge check")
    parser.add_argument("--receivers", choices=["blocks", "heads"], default="blocks",
                        help="edge receivers: attention blocks, or each head's query, key and value")
    parser.add_argument("--ig-steps", type=int, default=8, help="integrated-gradient steps of the IG variants")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_grad_enabled(True)
    chosen = pairs(args.pool)
    for name in args.models:
        model = HookedVLM.from_pretrained(name)
        tok = model.tokenizer
        # The toys answer "Yes"/"No": each side is the logsumexp over both casings.
        metric = logit_diff(tok.convert_tokens_to_ids(["Yes", "yes"]), tok.convert_tokens_to_ids(["No", "no"]))
        kinds = {
            "resid": (attribute_residual, patch_residual, {}, {}),
            f"resid IG{args.ig_steps}": (attribute_residual, patch_residual, {"ig_steps": args.ig_steps}, {}),
            "heads z": (attribute_heads, patch_heads, {"point": "z"}, {"point": "z"}),
            f"heads z IG{args.ig_steps}": (attribute_heads, patch_heads, {"point": "z", "ig_steps": args.ig_steps},
                                           {"point": "z"}),
            "heads q": (attribute_heads, patch_heads, {"point": "q", "qk_fix": False}, {"point": "q"}),
            "heads q AtP*": (attribute_heads, patch_heads, {"point": "q"}, {"point": "q"}),
            "heads k": (attribute_heads, patch_heads, {"point": "k", "qk_fix": False}, {"point": "k"}),
            "heads k AtP*": (attribute_heads, patch_heads, {"point": "k"}, {"point": "k"}),
        }
        if args.skip_nodes:
            kinds = {}
        cells = {key: ([], []) for key in kinds}
        edge_kinds = {"EAP": 0, f"EAP-IG{args.ig_steps}": args.ig_steps}
        edge_cells = {key: ([], []) for key in edge_kinds}
        redundancy = []
        used = 0
        for question, yes_image, no_image in chosen:
            clean, corrupt = model.prepare([yes_image], [question]), model.prepare([no_image], [question])
            if clean.layout.seq_len != corrupt.layout.seq_len:
                continue
            if not args.all_pairs and not (float(metric(model.forward(clean), clean)) > 0
                                           > float(metric(model.forward(corrupt), corrupt))):
                continue
            exact_cache = {}
            for key, (atp_fn, exact_fn, atp_kw, exact_kw) in kinds.items():
                cells[key][0].append(effects(atp_fn(model, clean, corrupt, metric, **atp_kw)))
                tag = (exact_fn, tuple(exact_kw.items()))
                if tag not in exact_cache:
                    exact_cache[tag] = effects(exact_fn(model, clean, corrupt, metric, chunk_size=16, **exact_kw))
                cells[key][1].append(exact_cache[tag])
                if key == "resid":
                    whole = float(metric(model.forward(clean), clean) - metric(model.forward(corrupt), corrupt))
                    layer0 = exact_cache[tag].reshape(model.n_layers, -1)[0]
                    redundancy.append(float(layer0.sum()) / whole)
            if used < args.edge_pairs:
                exact_edges = {}
                for key, steps in edge_kinds.items():
                    edges = attribute_edges(model, clean, corrupt, metric, ig_steps=steps,
                                            receivers=args.receivers)
                    for edge, score in edges.top(args.edges):
                        if edge not in exact_edges:
                            exact_edges[edge] = patch_edge(model, clean, corrupt, metric, edge) - edges.corrupt_metric
                        edge_cells[key][0].append(score)
                        edge_cells[key][1].append(exact_edges[edge])
            used += 1
            if used == args.pairs:
                break
        for key, (atp, exact) in cells.items():
            a, e = np.concatenate(atp), np.concatenate(exact)
            r = float(np.corrcoef(a, e)[0, 1])
            print(f"{name:14s} {key:13s} pairs={len(atp):3d} cells={a.size:6d} Pearson r={r:.3f}")
        if redundancy:
            print(f"{name:14s} layer-0 single-position exact effects / whole effect: median {np.median(redundancy):.2f} "
                  f"(range {min(redundancy):.2f}-{max(redundancy):.2f})")
        for key, (score, exact) in edge_cells.items():
            if score:
                r = float(np.corrcoef(score, exact)[0, 1])
                same = float(np.mean(np.sign(score) == np.sign(exact)))
                print(f"{name:14s} {key} ({args.receivers}) top-{args.edges} edges x {min(used, args.edge_pairs)} pairs vs exact edge "
                      f"patching: Pearson r={r:.3f}, same sign {same:.2f}")


if __name__ == "__main__":
    main()
