"""Localise "reliability neurons" and compare where they sit in early- vs late-fusion VLMs.

For every text layer, each MLP neuron's direct contribution to the yes-minus-no logit at
the answer position is ``activation x (W_down[:, n] . (W_U[yes] - W_U[no]))`` (the final
norm's scale ignored, as in direct logit attribution). Neurons are ranked by the mean
absolute contribution over a SynthPOPE sample; the top-k of the whole model are then
zero-ablated together (one stacked sweep: top-k, and ``--controls`` random k-sets) and
the change in POPE accuracy and in the yes-no logit difference is reported, together with
the normalised depth (layer / n_layers) of the top neurons.

Uses only the public ``vlmlens`` API.

    python circuits/reliability_neurons.py --models toy-llava toy-paligemma toy-qwen2vl --images 20
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch

import vlmlens
from vlmlens import Ablate, HookedVLM, Point, Site, Tower


@dataclass(frozen=True)
class NeuronSearch:
    model: str
    family: str
    n_layers: int
    top_neurons: list[tuple[int, int]]  # (layer, neuron)
    mean_depth: float
    accuracy_clean: float
    accuracy_top_ablated: float
    accuracy_random_ablated: float
    logit_diff_change_top: float
    logit_diff_change_random: float
    n: int


def _single_token_ids(model: HookedVLM, words: tuple[str, ...]) -> list[int]:
    ids = []
    for word in words:
        tokens = model.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(tokens) == 1:
            ids.append(tokens[0])
    return ids


def search(model: HookedVLM, name: str, *, n_images: int = 10, k: int = 5, controls: int = 3,
           seed: int = 0) -> NeuronSearch:
    """Rank MLP neurons by direct yes-no attribution, then ablate the top k vs random k."""
    data = vlmlens.synth_pope("adversarial", n_images, seed=seed)
    items = list(data.items)
    batch = model.prepare([data.image(i) for i in items], [i.text for i in items], suffix=True)
    yes, no = _single_token_ids(model, ("Yes", "yes")), _single_token_ids(model, ("No", "no"))
    unembed = model.unembed.weight
    direction = unembed[yes].mean(0) - unembed[no].mean(0)  # d_model
    post = [Site(Tower.TEXT, Point.MLP_POST, layer) for layer in range(model.n_layers)]
    _, cache = vlmlens.run_with_cache(model, batch, sites=post, positions="last")
    scores = []
    for layer, site in enumerate(post):
        down = model.block_module("text", layer, "mlp_down").weight
        weight = (direction @ down).detach()  # d_mlp
        scores.append((cache[site] * weight).abs().mean(0))
    scores = torch.stack(scores)  # layer d_mlp
    top = torch.topk(scores.flatten(), k).indices
    d_mlp = scores.shape[1]
    top_neurons = [(int(i) // d_mlp, int(i) % d_mlp) for i in top]
    generator = torch.Generator().manual_seed(seed)
    random_sets = [[(int(i) // d_mlp, int(i) % d_mlp) for i in torch.randperm(scores.numel(), generator=generator)[:k]]
                   for _ in range(controls)]

    def condition(neurons: list[tuple[int, int]]) -> list[Ablate]:
        by_layer: dict[int, list[int]] = {}
        for layer, neuron in neurons:
            by_layer.setdefault(layer, []).append(neuron)
        return [Ablate(site=post[layer], dims=tuple(ns)) for layer, ns in sorted(by_layer.items())]

    stacked = vlmlens.sweep(model, batch, [[], condition(top_neurons), *[condition(s) for s in random_sets]])
    last = torch.tensor(batch.layout.last_prompt)
    final = stacked[:, torch.arange(len(items)), last]  # condition batch vocab
    diff = final[..., yes].max(-1).values - final[..., no].max(-1).values
    labels = [i.label for i in items]
    answers = [["yes" if d > 0 else "no" for d in row] for row in diff]
    acc = [vlmlens.pope_metrics(a, labels).accuracy for a in answers]
    return NeuronSearch(
        model=name, family=model.family, n_layers=model.n_layers, top_neurons=top_neurons,
        mean_depth=float(sum(layer for layer, _ in top_neurons) / k / max(model.n_layers - 1, 1)),
        accuracy_clean=acc[0], accuracy_top_ablated=acc[1],
        accuracy_random_ablated=float(sum(acc[2:]) / max(controls, 1)),
        logit_diff_change_top=float((diff[1] - diff[0]).abs().mean()),
        logit_diff_change_random=float((diff[2:] - diff[0]).abs().mean()),
        n=len(items),
    )


def main(argv: list[str] | None = None) -> list[NeuronSearch]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["toy-llava", "toy-paligemma", "toy-qwen2vl"])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--controls", type=int, default=3)
    args = parser.parse_args(argv)
    results = []
    for name in args.models:
        if name.startswith("tiny-"):
            from vlmlens.testing import tiny_vlm

            model = tiny_vlm(name.removeprefix("tiny-"))
        else:
            model = HookedVLM.from_pretrained(name)
        results.append(search(model, name, n_images=args.images, k=args.k, controls=args.controls))
        print(json.dumps(asdict(results[-1])))
    return results


if __name__ == "__main__":
    main()
