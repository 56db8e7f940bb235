"""Zoo v2: three toys that differ only in *when and how* vision is fused.

The three arms share the dimensions (:data:`vlmlens.zoo.configs.DIMS` ``["toy2"]``: 6 text
layers of width 192, 2 key-value heads everywhere), the number of image tokens (16 per 64 px
image: LLaVA's and PaliGemma's towers cut 16 px patches, Qwen2-VL's cuts 8 px patches and
merges them 2x2), the training scenes and examples, the
vision-tower pre-training, the batch size and the total number of optimiser steps. No arm
has an auxiliary readout: every loss is the language-modelling loss on answer tokens.
Every arm's LM is first pre-trained on the examples' text with the images withheld (the same
``lm-text`` stage: it learns the answers' priors), as the real models start from a text LM.
What differs is the fusion:

* ``late`` (LLaVA): the tower, pre-trained separately, stays frozen; the projector alone
  learns on captions (LLaVA's stage 1), then projector and LM learn together (stage 2).
  Causal mask: image tokens never see the question.
* ``early`` (PaliGemma): tower, projector and LM learn together from the first image step,
  with a bidirectional prefix (image and question attend to each other).
* ``native`` (Qwen2-VL): tower and 2x2 patch merger learn on captions with the LM frozen
  (Qwen2-VL's stage 1), then everything learns together; causal, M-RoPE, images kept at
  their own size (the training scenes come at 48 and 64 px).

Examples:
    >>> from vlmlens.zoo.fusion import FUSION_RECIPES
    >>> [s.name for s in FUSION_RECIPES["llava"].stages]
    ['lm-text', 'align', 'instruct']
    >>> FUSION_RECIPES["llava"].steps == FUSION_RECIPES["paligemma"].steps
    True
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vlmlens.data import SynthConfig
from vlmlens.zoo.configs import Dims, Size, dims
from vlmlens.zoo.data import DataConfig
from vlmlens.zoo.errors import ZooError, check_family
from vlmlens.zoo.io import write_meta
from vlmlens.zoo.pretrain import PretrainResult
from vlmlens.zoo.resume import (
    SNAPSHOT_FORMAT,
    RunState,
    load_state,
    save_state,
    state_path,
)
from vlmlens.zoo.stages import Stage, StageResult, StageState, run_stage
from vlmlens.zoo.tokenizer import Family
from vlmlens.zoo.train import prepare, save_checkpoint, torch_threads, versions

logger = logging.getLogger(__name__)

Fusion = Literal["late", "early", "native"]

#: The fusion of each family's arm.
FUSION_OF: dict[Family, Fusion] = {"llava": "late", "paligemma": "early", "qwen2_vl": "native"}

ZOO2_SYNTH = SynthConfig()
"""SynthPOPE knobs of zoo v2 (training and evaluation)."""

ZOO2_DATA = DataConfig(n_images=1000, image_sizes=(48, 64), synth=ZOO2_SYNTH, grounding_rate=0.2)
"""The training set of every arm: 1,000 scenes at 48 px and 1,000 at 64 px (LLaVA and
PaliGemma resize them to 64 px; Qwen2-VL keeps each at its own size)."""


@dataclass(frozen=True, kw_only=True)
class FusionRecipe:
    """How one zoo v2 arm is trained.

    Attributes:
        fusion: ``"late"``, ``"early"`` or ``"native"`` (for the model card; the stages
            and the family's architecture are what make it so).
        stages: The training stages after the tower pre-training, in order.
        data: The training set.
        batch_size: Examples per step in every stage.
        weight_decay: AdamW weight decay in every stage.
        vision_pretrain_steps: Steps of tower pre-training on object presence and layout
            (:func:`~vlmlens.zoo.pretrain.pretrain_vision_tower`); 0 for none. The tower
            is frozen afterwards unless a stage trains it.
        vision_pretrain_lr: Its learning rate.
        vision_pretrain_batch: Its batch size (images).
        vision_pretrain_merger: Qwen2-VL only: pre-train the 2x2 merger with the tower.
            ``False`` in zoo v2: the merger is Qwen2-VL's projector, and no arm
            pre-trains its projector (a merger pre-trained on presence and layout heads
            hands the LM image tokens about 100 times the norm of its text embeddings,
            and the native arm then sat at chance).
        vision_feature_layer: LLaVA's ``vision_feature_layer``; ``None`` keeps the config's.
        tie_word_embeddings: Tie the LM's input and output embeddings (``None``: the
            family's default).
        qwen_min_size: Qwen2-VL only: smallest image side kept as is by the processor.
        size: Model dimensions: ``"toy2"`` for the zoo, ``"tiny"`` for quick tests.
        patch_size: The tower's patch side in pixels (Qwen2-VL's before its 2x2 merger);
            ``None`` keeps the size's (:attr:`Dims.patch_size`). A 16 px patch gives a
            64 px image 16 tokens, as Qwen2-VL's 8 px patches merged 2x2 do.
    """

    fusion: Fusion
    stages: tuple[Stage, ...]
    data: DataConfig = field(default_factory=lambda: ZOO2_DATA)
    batch_size: int = 64
    weight_decay: float = 0.01
    vision_pretrain_steps: int = 150
    vision_pretrain_lr: float = 3e-3
    vision_pretrain_batch: int = 64
    vision_pretrain_merger: bool = False
    vision_feature_layer: int | None = -1
    tie_word_embeddings: bool | None = True
    qwen_min_size: int = 32
    size: Size = "toy2"
    patch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ZooError("FusionRecipe.stages is empty; give at least one Stage.")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ZooError(f"FusionRecipe stage names must be distinct; got {names}.")
        for name in ("batch_size", "vision_pretrain_batch"):
            if getattr(self, name) < 1:
                raise ZooError(f"FusionRecipe.{name} must be >= 1; got {getattr(self, name)}.")
        if self.vision_pretrain_steps < 0:
            raise ZooError(f"FusionRecipe.vision_pretrain_steps must be >= 0; got {self.vision_pretrain_steps}.")
        if self.freeze_vision and self.vision_pretrain_steps == 0:
            raise ZooError("No stage trains the tower and vision_pretrain_steps is 0: the tower would stay random.")
        _ = self.dims  # a patch_size that does not tile the images fails here, not mid-run

    @property
    def dims(self) -> Dims:
        """The model dimensions: those of :attr:`size`, with :attr:`patch_size` if set.

        Raises:
            ZooError: If the images are not a whole number of patches.
        """
        d = dims(self.size)
        return d if self.patch_size is None else dataclasses.replace(d, patch_size=self.patch_size)

    @property
    def steps(self) -> int:
        """Optimiser steps of all stages together (the tower pre-training aside)."""
        return sum(s.steps for s in self.stages)

    @property
    def freeze_vision(self) -> bool:
        """Whether the tower stays frozen after its pre-training (no stage trains it)."""
        return not any("tower" in s.train for s in self.stages)

    def scaled(self, steps: int) -> FusionRecipe:
        """The same recipe with about ``steps`` steps in all, each stage (and the tower
        pre-training) scaled in proportion, at least one step each.

        Raises:
            ZooError: If ``steps`` is below the number of stages.
        """
        if steps < len(self.stages):
            raise ZooError(f"steps must be >= {len(self.stages)} (one per stage); got {steps}.")
        stages = tuple(dataclasses.replace(s, steps=max(1, s.steps * steps // self.steps)) for s in self.stages)
        pre = max(1, self.vision_pretrain_steps * steps // self.steps) if self.vision_pretrain_steps else 0
        return dataclasses.replace(self, stages=stages, vision_pretrain_steps=pre)


def _lm_text() -> Stage:
    # Every arm starts from the same text-pretrained LM, as LLaVA (Vicuna), PaliGemma
    # (Gemma) and Qwen2-VL (Qwen2) do: trained from scratch on images, the causal native
    # arm sat at chance for 1,800 steps (docs/zoo/v2.md).
    return Stage(name="lm-text", steps=800, lr=2e-3, train=("lm",), text_only=True)


def _late() -> tuple[Stage, ...]:
    return (
        _lm_text(),
        Stage(name="align", steps=200, lr=2e-3, train=("projector",), caption_rate=1.0, grounding_rate=0.0),
        Stage(name="instruct", steps=2000, lr=1e-3, train=("projector", "lm")),
    )


def _early() -> tuple[Stage, ...]:
    return (_lm_text(), Stage(name="joint", steps=2200, lr=1e-3, train=("tower", "projector", "lm")))


def _native() -> tuple[Stage, ...]:
    # Qwen2-VL's stage 1 trains the vision side (tower and merger) with the LM frozen,
    # then everything learns together.
    return (
        _lm_text(),
        Stage(name="align", steps=200, lr=2e-3, train=("tower", "projector"), caption_rate=1.0, grounding_rate=0.0),
        Stage(name="joint", steps=2000, lr=1e-3, train=("tower", "projector", "lm")),
    )


FUSION_RECIPES: dict[Family, FusionRecipe] = {
    "llava": FusionRecipe(fusion="late", stages=_late(), patch_size=16),
    "paligemma": FusionRecipe(fusion="early", stages=_early(), patch_size=16),
    "qwen2_vl": FusionRecipe(fusion="native", stages=_native()),
}
"""The zoo v2 recipe of each family's arm (the search that fixed it: docs/zoo/v2.md)."""


@dataclass(frozen=True, kw_only=True)
class FusionResult:
    """What a zoo v2 training run produced.

    Attributes:
        family: Model family.
        out: The checkpoint folder.
        seed: Training seed.
        seconds: Wall-clock seconds of data preparation, tower pre-training and the
            stages, summed over the sessions of a resumed run (the time a resumed session
            spends rebuilding the training set is not counted).
        threads: torch threads used.
        n_params: Parameter count.
        vision_pretrain: Result of the tower pre-training, if any.
        stages: Result of each stage.
    """

    family: Family
    out: Path
    seed: int
    seconds: float
    threads: int
    n_params: int
    vision_pretrain: PretrainResult | None
    stages: tuple[StageResult, ...]

    @property
    def final_loss(self) -> float:
        """Final loss of the last stage."""
        return self.stages[-1].final_loss


def train_fusion(
    family: Family,
    out: str | Path,
    seed: int = 0,
    steps: int | None = None,
    *,
    recipe: FusionRecipe | None = None,
    threads: int = 1,
    progress: bool = True,
    callback: Callable[[str, int, nn.Module], None] | None = None,
    callback_every: int = 100,
    snapshot_every: int = 100,
    restart: bool = False,
) -> FusionResult:
    """Train a zoo v2 arm from scratch and save it with ``save_pretrained``.

    Same family, seed, recipe, thread count and library versions give the same weights,
    whether the run went through in one go or was killed and resumed (module
    :mod:`vlmlens.zoo.resume`): a run started again with the same arguments continues from
    the snapshot it left in ``out``.

    Args:
        family: ``"llava"`` (late fusion), ``"paligemma"`` (early) or ``"qwen2_vl"`` (native).
        out: Checkpoint folder to write (created; existing files are overwritten).
        seed: Seed of the weights and the example order.
        steps: Total steps of all stages; ``None`` keeps the recipe's (see
            :meth:`FusionRecipe.scaled`).
        recipe: Training recipe; default :data:`FUSION_RECIPES` ``[family]``.
        threads: torch threads during training (restored afterwards).
        progress: Show tqdm progress bars.
        callback: Called as ``callback(stage_name, step, model)`` every
            ``callback_every`` steps of each stage and after its last, in eval mode
            without gradients (e.g. to record a learning curve); it must not change the
            model or use torch's global random state.
        callback_every: Steps between callback calls.
        snapshot_every: Steps between a stage's snapshots: a kill loses at most these
            steps of the stage it interrupts (or the tower pre-training and data
            preparation, which are not snapshotted mid-way). A resumed run calls
            ``callback`` again for the steps it redoes.
        restart: Discard a snapshot in ``out`` and start over.

    Returns:
        A :class:`FusionResult`.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
        ZooError: For an invalid recipe, step count or ``snapshot_every``, or a snapshot in
            ``out`` left by a run with other arguments.
    """
    check_family(family)
    if snapshot_every < 1:
        raise ZooError(f"snapshot_every must be >= 1; got {snapshot_every}.")
    r = recipe if recipe is not None else FUSION_RECIPES[family]
    if steps is not None:
        r = r.scaled(steps)
    began = time.perf_counter()
    path = state_path(out)
    if restart:
        path.unlink(missing_ok=True)
    key = {
        "format": SNAPSHOT_FORMAT,
        "family": family,
        "seed": seed,
        "recipe": recipe_dict(r),
        "threads": threads,
        "versions": versions(),
    }
    state = load_state(path, key)
    with torch_threads(threads):
        model, processor, ts, pre = prepare(family, r, seed, progress=progress, pretrain=state is None)
        if state is None:
            state = _snapshot(key, 0, [], None, model, pre, time.perf_counter() - began)
            save_state(path, state)
        else:
            model.load_state_dict(state.model)
            torch.set_rng_state(state.torch_rng)
            logger.info("%s: resuming the run in %s at stage %d", family, out, state.stage)
        results = list(state.done)
        for index in range(state.stage, len(r.stages)):
            stage = r.stages[index]

            def snapshot(current: StageState, index: int = index) -> None:
                save_state(path, _snapshot(key, index, results, current, model, state.pretrain, state.seconds))

            results.append(
                run_stage(
                    family,
                    model,
                    ts,
                    stage,
                    seed=seed,
                    index=index,
                    batch_size=r.batch_size,
                    weight_decay=r.weight_decay,
                    progress=progress,
                    callback=_bind(callback, stage.name) if callback is not None else None,
                    callback_every=callback_every,
                    start=state.current if index == state.stage else None,
                    snapshot=snapshot,
                    snapshot_every=snapshot_every,
                )
            )
            save_state(path, _snapshot(key, index + 1, results, None, model, state.pretrain, state.seconds))
        folder = save_checkpoint(model, processor, out)
    result = FusionResult(
        family=family,
        out=folder,
        seed=seed,
        seconds=state.seconds + sum(s.seconds for s in results),
        threads=threads,
        n_params=sum(p.numel() for p in model.parameters()),
        vision_pretrain=state.pretrain,
        stages=tuple(results),
    )
    write_meta(folder, _meta(result, r))
    path.unlink()  # only now: a kill before this point resumes and saves again
    logger.info("trained %s (zoo v2, %s fusion) in %.0f s", family, r.fusion, result.seconds)
    return result


def _snapshot(
    key: dict[str, Any],
    stage: int,
    done: list[StageResult],
    current: StageState | None,
    model: nn.Module,
    pretrain: PretrainResult | None,
    seconds: float,
) -> RunState:
    return RunState(
        key=key,
        stage=stage,
        done=tuple(done),
        current=current,
        model=model.state_dict(),
        pretrain=pretrain,
        torch_rng=torch.get_rng_state(),
        seconds=seconds,
    )


def _bind(callback: Callable[[str, int, nn.Module], None], name: str) -> Callable[[int, nn.Module], None]:
    def hook(step: int, model: nn.Module) -> None:
        callback(name, step, model)

    return hook


def recipe_dict(r: FusionRecipe) -> dict[str, Any]:
    """A recipe as ``zoo.json`` records it (JSON-ready apart from tuples)."""
    recipe = dataclasses.asdict(r)
    recipe["data"]["synth"] = r.data.synth.to_dict()
    return recipe


def _meta(result: FusionResult, r: FusionRecipe) -> dict[str, Any]:
    recipe = recipe_dict(r)
    return {
        "zoo_version": 2,
        "family": result.family,
        "fusion": r.fusion,
        "seed": result.seed,
        "recipe": recipe,
        "train_seconds": round(result.seconds, 1),
        "threads": result.threads,
        "final_loss": result.final_loss,
        "n_params": result.n_params,
        "vision_pretrain": dataclasses.asdict(result.vision_pretrain) if result.vision_pretrain else None,
        "stages": [
            {"name": s.name, "steps": s.steps, "seconds": round(s.seconds, 1), "final_loss": s.final_loss}
            for s in result.stages
        ],
        "eval_synth": r.data.synth.to_dict(),
        "versions": versions(),
    }
