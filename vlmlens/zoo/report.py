"""A zoo v2 checkpoint's model card, measured and rendered from what the checkpoint records.

:func:`measure_card` evaluates a checkpoint trained by :func:`~vlmlens.zoo.fusion.train_fusion`
on the three held-out SynthPOPE splits (POPE metrics, false yeses per split) and measures
where its answer forms (:func:`~vlmlens.zoo.card.layer_profile`); :class:`ZooCard` renders
the card (recipe, what differs between the arms, test metrics, layer profile, caveats)
from those numbers and the checkpoint's ``zoo.json``, so every seed of every arm gets its
card from one command, ``vlmlens zoo report DIR --out docs/zoo``.

Examples:
    >>> from vlmlens.zoo.report import measure_card
    >>> card = measure_card("runs/llava-s1", name="toy-llava-v2-seed1")  # doctest: +SKIP
    >>> print(card.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmlens.data import PopeMetrics
from vlmlens.data.pope import Split
from vlmlens.zoo.card import LayerProfile, layer_profile
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.evaluate import evaluate
from vlmlens.zoo.fusion import FUSION_RECIPES, Fusion, recipe_dict
from vlmlens.zoo.io import read_meta, resolve

__all__ = ["FUSION_TEXT", "ZooCard", "measure_card"]

SPLITS: tuple[Split, ...] = ("adversarial", "popular", "random")
"""The card's row order: the split the zoo's accuracy target is stated on comes first
(:data:`vlmlens.data.pope.SPLITS` orders them by difficulty on real POPE)."""

FUSION_TEXT: dict[Fusion, str] = {
    "late": ("late fusion (LLaVA's recipe): the tower is pre-trained, then frozen; a projector maps its "
             "tokens into an LM first trained on text; the image tokens come before the question under "
             "the causal mask, so they never see it"),
    "early": ("early fusion (PaliGemma's recipe): tower, projector and LM learn together after the LM's "
              "text stage; image and question attend to each other in both directions (prefix-LM)"),
    "native": ("native multimodal fusion (Qwen2-VL's recipe): tower and 2x2 patch merger are aligned with "
               "the LM frozen, then everything learns together; causal mask with M-RoPE, and each image "
               "keeps its own size (48 px scenes give 9 image tokens, 64 px scenes 16)"),
}
"""What each arm's fusion means, for its card (the stages in ``zoo.json`` give the numbers)."""

CAVEAT = (
    "These are controlled miniatures trained in minutes on synthetic scenes, not the real models: "
    "the three arms share their data, widths, depth, optimiser, batch and step budget and differ only "
    "in how and when vision meets language (plus what each Hugging Face class brings: Gemma's GeGLU "
    "MLP and `1 + w` RMSNorm, SigLIP vs CLIP towers). Where an arm forms its answer is measured per "
    "checkpoint below, not claimed from the design; it also depends on the optimisation and the seed, "
    "so compare arms across seeds."
)


@dataclass(frozen=True, kw_only=True)
class ZooCard:
    """A zoo v2 checkpoint's measured card.

    Attributes:
        name: The name the card is written under (e.g. ``"toy-llava-v2"``).
        meta: The checkpoint's ``zoo.json`` (recipe, seed, training time, versions).
        test_seed: SynthPOPE seed of the test scenes (0: never used in training).
        metrics: POPE metrics per split, on ``n_images`` test scenes each.
        n_images: Test scenes per split (6 questions each).
        profile: Where the answer forms, on the adversarial test questions.
    """

    name: str
    meta: dict[str, Any]
    test_seed: int
    metrics: dict[str, PopeMetrics]
    n_images: int
    profile: LayerProfile

    @property
    def code_recipe(self) -> bool:
        """Whether the checkpoint was trained with its arm's recipe in :data:`FUSION_RECIPES`
        (a pilot's variant is not, and ``vlmlens zoo train`` would not rebuild it)."""
        code = json.loads(json.dumps(recipe_dict(FUSION_RECIPES[self.meta["family"]])))
        return code == self.meta["recipe"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything the card shows, with the full recipe."""
        return {
            "name": self.name,
            "family": self.meta["family"],
            "fusion": self.meta["fusion"],
            "train_seed": self.meta["seed"],
            "test_seed": self.test_seed,
            "code_recipe": self.code_recipe,
            "n_images": self.n_images,
            "metrics": {s: m.to_dict() for s, m in self.metrics.items()},
            "profile": self.profile.to_dict(),
            "zoo": self.meta,
        }

    def to_markdown(self) -> str:
        """The card, as ``docs/zoo`` shows it."""
        m, r = self.meta, self.meta["recipe"]
        data, synth = r["data"], r["data"]["synth"]
        pre = m.get("vision_pretrain") or {}
        stages = "\n".join(
            f"| `{s['name']}` | {s['steps']:,} | {s['lr']:g} | {', '.join(s['train'])} | "
            f"{'withheld' if s['text_only'] else 'yes'} | {s['caption_rate']:g} / {s['grounding_rate']:g} | "
            f"{done['seconds'] / 60:.1f} min | {done['final_loss']:.3f} |"
            for s, done in zip(r["stages"], m["stages"], strict=True)
        )
        rows = "\n".join(
            f"| {s} | {x.n} | **{x.accuracy:.3f}** | {x.precision:.3f} | {x.recall:.3f} | {x.f1:.3f} | "
            f"{x.yes_ratio:.3f} | {x.fp} | {x.fn} |"
            for s, x in self.metrics.items()
        )
        adv, pop = self.metrics["adversarial"].fp, self.metrics["popular"].fp
        ratio = f" ({adv / pop:.1f}x)" if pop else ""
        if self.code_recipe:
            rebuild = (f"vlmlens zoo train --version 2 --family {m['family']} --seed {m['seed']} --out DIR "
                       f"--threads {m['threads']}")
        else:
            rebuild = ("# not vlmlens.zoo.fusion.FUSION_RECIPES: rebuild with train_fusion(..., recipe=...) "
                       "from the recipe in zoo.json")
        return f"""# {self.name}

Zoo v2, the **{m['fusion']}-fusion arm** ({m['family']}), training seed {m['seed']}:
{FUSION_TEXT[m['fusion']]}. {m['n_params']:,} parameters, trained in {m['train_seconds'] / 60:.1f} min on
{m['threads']} CPU thread(s) (torch {m['versions'].get('torch', '?')}, transformers
{m['versions'].get('transformers', '?')}, CPU kernels {m['versions'].get('cpu', 'not recorded')}).

{CAVEAT}

## Recipe

Tower pre-training: {r['vision_pretrain_steps']} steps, batch {r['vision_pretrain_batch']} images, AdamW
{r['vision_pretrain_lr']:g}, on object presence and per-patch layout (heads discarded; presence / layout
accuracy {pre.get('presence_accuracy', float('nan')):.3f} / {pre.get('layout_accuracy', float('nan')):.3f} on its
last batches). Then, at batch {r['batch_size']} with AdamW (weight decay {r['weight_decay']:g}), warm-up
and cosine decay per stage:

| stage | steps | peak lr | trains | images | caption / grounding share | time | final loss |
|---|---|---|---|---|---|---|---|
{stages}

Training scenes: SynthPOPE seed {data['seed']}, {data['n_images']:,} scenes per image size
({', '.join(f'{s} px' for s in data['image_sizes'])}); objects {synth['object_scale'][0]:g}-{synth['object_scale'][1]:g}
of the side, {synth['clutter'][0]}-{synth['clutter'][1]} per scene, contrast {synth['contrast']:g}, noise
{synth['noise']:g}, occlusion {synth['occlusion']:g}, {synth['off_scene_rate']:.0%} off-scene objects. No
auxiliary loss: every loss is the language-modelling loss on answer tokens.

## POPE on held-out scenes

SynthPOPE seed {self.test_seed} ({self.n_images} scenes, 3 yes and 3 no questions each per split; the
training knobs), greedy decoding, POPE's parser and metrics (positive class: yes). False yeses on
adversarial negatives (absent objects that co-occur with present ones) against popular ones: {adv}
vs {pop}{ratio}.

| split | n | accuracy | precision | recall | F1 | yes-ratio | false yeses | misses |
|---|---|---|---|---|---|---|---|---|
{rows}

## Where the answer forms

{self.profile.to_markdown()}

The answer margin is the logit lens at the last prompt position after each block (yes minus no,
signed towards the truth, through the real final norm); the peak visual layer is where the real
image adds most margin over a blank one. Zeroing a block's MLP output (every position) gives the
accuracy and the share of answers that flip (95% bootstrap CI over images).

## Reproduce

```
{rebuild}
vlmlens zoo report DIR --name {self.name} --out docs/zoo
```

Same seed, recipe, thread count, library versions and CPU kernels (AVX2, AVX512, ...: torch's
kernels round differently) give bit-identical weights.
"""


def measure_card(name_or_path: str | Path, *, name: str | None = None, n_images: int = 500,
                 profile_images: int = 100, seed: int = 0, progress: bool = True) -> ZooCard:
    """Evaluate a zoo v2 checkpoint on the three test splits and measure its layer profile.

    Args:
        name_or_path: A zoo name or a checkpoint folder written by ``train_fusion``.
        name: The card's name; default: the zoo name or the folder's name.
        n_images: Test scenes per split for the POPE metrics.
        profile_images: Test scenes for the layer profile (adversarial questions).
        seed: SynthPOPE seed of the test scenes (0: the held-out test set).
        progress: Show progress bars.

    Returns:
        A :class:`ZooCard`.

    Raises:
        ZooError: For an unknown name or folder, or a checkpoint that is not zoo v2.
    """
    folder = resolve(name_or_path)
    meta = read_meta(folder)
    if meta.get("zoo_version") != 2:
        raise ZooError(f"{name_or_path!s} is not a zoo v2 checkpoint (its zoo.json has zoo_version "
                       f"{meta.get('zoo_version')!r}); `vlmlens zoo report` renders v2 cards, and "
                       "`vlmlens zoo eval` / `vlmlens zoo card` measure any checkpoint.")
    metrics = {s: evaluate(folder, s, n_images=n_images, seed=seed, progress=progress) for s in SPLITS}
    name = name or Path(str(name_or_path)).name
    profile = layer_profile(folder, "adversarial", n_images=profile_images, seed=seed)
    return ZooCard(name=name, meta=meta, test_seed=seed, metrics=metrics, n_images=n_images,
                   profile=dataclasses.replace(profile, model=name))
