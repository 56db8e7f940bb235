"""Train a toy zoo model on SynthPOPE, reproducibly, on a CPU.

Examples:
    >>> from vlmlens.zoo.train import train
    >>> result = train("llava", "/tmp/toy-llava", seed=0, steps=50)  # doctest: +SKIP
    >>> result.seconds < 900  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import transformers
from transformers import PreTrainedModel

from vlmlens.data import SynthConfig
from vlmlens.progress import progress_bar
from vlmlens.zoo.configs import Dims, Size, build_config, dims
from vlmlens.zoo.data import DataConfig, TrainSet, build_train_set, collate
from vlmlens.zoo.errors import ZooError, check_family
from vlmlens.zoo.io import save_processor, write_meta
from vlmlens.zoo.models import MODEL_CLASSES
from vlmlens.zoo.pretrain import (
    PretrainResult,
    optimizer_step,
    pretrain_vision_tower,
    tower_of,
    warmup_cosine,
)
from vlmlens.zoo.processors import build_processor
from vlmlens.zoo.stages import Sampler, report
from vlmlens.zoo.tokenizer import Family

logger = logging.getLogger(__name__)

#: SynthPOPE knobs of the zoo (training and the model cards' evaluation).
ZOO_SYNTH = SynthConfig()


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one toy model is trained.

    Attributes:
        steps: Optimiser steps of the main stage.
        batch_size: Examples per step.
        lr: Peak AdamW learning rate (linear warm-up over 5% of the steps, cosine decay).
        weight_decay: AdamW weight decay.
        data: The training set.
        vision_pretrain_steps: Steps of tower pre-training before the main stage
            (LLaVA: the tower is then frozen); 0 for none.
        vision_pretrain_lr: Its learning rate.
        vision_pretrain_batch: Its batch size (images).
        vision_pretrain_merger: Qwen2-VL only: pre-train the 2x2 merger with the tower.
        freeze_vision: Keep the vision tower frozen in the main stage.
        vision_feature_layer: LLaVA's ``vision_feature_layer``; ``None`` keeps the config's.
        tie_word_embeddings: Tie the LM's input and output embeddings; ``None`` keeps
            the family's default (Gemma ties, Llama and Qwen2 do not).
        aux_weight: Weight of the deep-supervision heads (0 for none): two linear heads
            on the text residual stream after layer ``aux_layer``, at the last prompt
            position, predict the object the question names and the objects present.
            They give the "which object was asked" and "what is there" features a
            direct gradient, which a tiny LM otherwise finds only after a long plateau at
            chance; the heads are discarded after training.
        aux_layer: Text layer whose output the deep-supervision heads read.
        qwen_min_size: Qwen2-VL only: smallest image side kept as is by the processor.
        size: Model dimensions (:data:`vlmlens.zoo.configs.DIMS`): ``"toy"`` for the zoo,
            ``"tiny"`` for quick tests of the training code.
    """

    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    data: DataConfig = field(default_factory=DataConfig)
    vision_pretrain_steps: int = 0
    vision_pretrain_lr: float = 2e-3
    vision_pretrain_batch: int = 64
    vision_pretrain_merger: bool = True
    freeze_vision: bool = False
    vision_feature_layer: int | None = None
    tie_word_embeddings: bool | None = None
    aux_weight: float = 0.0
    aux_layer: int = 2
    qwen_min_size: int = 32
    size: Size = "toy"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "vision_pretrain_batch"):
            if getattr(self, name) < 1:
                raise ZooError(f"Recipe.{name} must be >= 1; got {getattr(self, name)}.")
        if self.vision_pretrain_steps < 0:
            raise ZooError(f"Recipe.vision_pretrain_steps must be >= 0; got {self.vision_pretrain_steps}.")
        if self.lr <= 0 or self.vision_pretrain_lr <= 0:
            raise ZooError(f"Learning rates must be positive; got {self.lr}, {self.vision_pretrain_lr}.")
        if self.freeze_vision and self.vision_pretrain_steps == 0:
            raise ZooError("Recipe.freeze_vision needs vision_pretrain_steps > 0 (a frozen random tower).")

    @property
    def dims(self) -> Dims:
        """The model dimensions: those of :attr:`size`."""
        return dims(self.size)


RECIPES: dict[Family, Recipe] = {
    "llava": Recipe(
        steps=800,
        lr=2e-3,
        data=DataConfig(n_images=2000, synth=ZOO_SYNTH, grounding_rate=0.2),
        vision_pretrain_steps=300,
        vision_pretrain_lr=3e-3,
        freeze_vision=True,
        vision_feature_layer=-1,
        tie_word_embeddings=True,
        aux_weight=0.5,
    ),
    "paligemma": Recipe(
        steps=950,
        lr=2e-3,
        data=DataConfig(n_images=2000, synth=ZOO_SYNTH, grounding_rate=0.2),
        vision_pretrain_steps=300,
        vision_pretrain_lr=3e-3,
        aux_weight=0.5,
    ),
    "qwen2_vl": Recipe(
        steps=800,
        lr=2e-3,
        data=DataConfig(n_images=1000, image_sizes=(48, 64), synth=ZOO_SYNTH, grounding_rate=0.2),
        vision_pretrain_steps=300,
        vision_pretrain_lr=3e-3,
        tie_word_embeddings=True,
        aux_weight=0.5,
    ),
}
"""The recipe of each zoo model."""


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        family: Model family.
        out: The checkpoint folder.
        seed: Training seed.
        steps: Main-stage optimiser steps.
        seconds: Wall-clock seconds, data preparation and saving included.
        threads: torch threads used.
        final_loss: Mean answer-token loss over the last 50 steps.
        losses: Loss of every main-stage step.
        n_params: Parameter count.
        vision_pretrain: Result of the tower pre-training, if any.
    """

    family: Family
    out: Path
    seed: int
    steps: int
    seconds: float
    threads: int
    final_loss: float
    losses: tuple[float, ...]
    n_params: int
    vision_pretrain: PretrainResult | None = None


def train(
    family: Family,
    out: str | Path,
    seed: int = 0,
    steps: int | None = None,
    *,
    recipe: Recipe | None = None,
    threads: int = 1,
    progress: bool = True,
    callback: Callable[[int, PreTrainedModel], None] | None = None,
    callback_every: int = 100,
) -> TrainResult:
    """Train a toy model from scratch and save it with ``save_pretrained``.

    Same family, seed, recipe and thread count give the same weights.

    Args:
        family: ``"llava"``, ``"paligemma"`` or ``"qwen2_vl"``.
        out: Checkpoint folder to write (created; existing files are overwritten).
        seed: Seed of the weights and the example order.
        steps: Main-stage steps; ``None`` keeps the recipe's. The LLaVA tower
            pre-training is scaled down in proportion.
        recipe: Training recipe; default :data:`RECIPES` ``[family]``.
        threads: torch threads during training (restored afterwards).
        progress: Show tqdm progress bars.
        callback: Called as ``callback(step, model)`` every ``callback_every`` main-stage
            steps and after the last (e.g. to record a learning curve); the model is in
            eval mode during the call.
        callback_every: Steps between callback calls.

    Returns:
        A :class:`TrainResult`.

    Raises:
        UnsupportedArchitectureError: For an unknown family.
        ZooError: For an invalid recipe or step count.
    """
    check_family(family)
    base = recipe if recipe is not None else RECIPES[family]
    if steps is not None:
        if steps < 1:
            raise ZooError(f"steps must be >= 1; got {steps}.")
        pre = base.vision_pretrain_steps * steps // base.steps
        base = dataclasses.replace(
            base, steps=steps, vision_pretrain_steps=max(pre, 1) if base.vision_pretrain_steps else 0
        )
    r = base
    start = time.perf_counter()
    with torch_threads(threads):
        model, processor, ts, pre_result = prepare(family, r, seed, progress=progress)
        losses = _main_stage(family, model, ts, r, seed, progress, callback, callback_every)
        model.eval()
        folder = save_checkpoint(model, processor, out)
        seconds = time.perf_counter() - start
    result = TrainResult(
        family=family,
        out=folder,
        seed=seed,
        steps=r.steps,
        seconds=seconds,
        threads=threads,
        final_loss=float(np.mean(losses[-50:])),
        losses=tuple(losses),
        n_params=sum(p.numel() for p in model.parameters()),
        vision_pretrain=pre_result,
    )
    write_meta(folder, _meta(result, r))
    logger.info("trained %s in %.0f s (final loss %.3f)", family, seconds, result.final_loss)
    return result


def prepare(
    family: Family, r: Any, seed: int, *, progress: bool = True, pretrain: bool = True
) -> tuple[Any, Any, TrainSet, PretrainResult | None]:
    """Build the processor, the seeded model and the training set, and pre-train the tower.

    Args:
        family: Model family.
        r: A :class:`Recipe` or :class:`~vlmlens.zoo.fusion.FusionRecipe` (both have
            ``dims``, ``size``, ``qwen_min_size``, ``vision_feature_layer``, ``tie_word_embeddings``,
            ``data``, ``vision_pretrain_*`` and ``freeze_vision``).
        seed: Seed of the weights and of the tower pre-training.
        progress: Show a tqdm progress bar.
        pretrain: Pre-train the tower as the recipe says; ``False`` skips it (a resumed
            run loads weights that already include it).

    Returns:
        ``(model, processor, train_set, tower_result)``; ``tower_result`` is ``None``
        without tower pre-training.
    """
    d = r.dims
    image_size = r.qwen_min_size if family == "qwen2_vl" else d.image_size
    processor = build_processor(family, image_size=image_size, patch_size=d.patch_size)
    config = build_config(family, d, tokenizer=processor.tokenizer)
    if family == "llava" and r.vision_feature_layer is not None:
        config.vision_feature_layer = r.vision_feature_layer
    if r.tie_word_embeddings is not None:
        config.tie_word_embeddings = r.tie_word_embeddings
        config.get_text_config().tie_word_embeddings = r.tie_word_embeddings
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config)
    ts = build_train_set(family, processor, r.data)
    logger.info("%s: %d images, %d examples", family, len(ts.pixels), len(ts.examples))
    pre = None
    if pretrain and r.vision_pretrain_steps:
        pre = pretrain_vision_tower(
            family,
            model,
            ts,
            steps=r.vision_pretrain_steps,
            batch_size=r.vision_pretrain_batch,
            lr=r.vision_pretrain_lr,
            seed=seed,
            freeze=r.freeze_vision,
            merger=r.vision_pretrain_merger,
            progress=progress,
        )
    return model, processor, ts, pre


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads, restoring the previous count afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _main_stage(
    family: Family,
    model: Any,
    ts: TrainSet,
    r: Recipe,
    seed: int,
    progress: bool,
    callback: Callable[[int, PreTrainedModel], None] | None,
    callback_every: int,
) -> list[float]:
    if r.freeze_vision:
        for p in tower_of(family, model).parameters():
            p.requires_grad_(False)
    aux = _AuxHeads(model.config.get_text_config().hidden_size, ts.labels.shape[1]) if r.aux_weight else None
    params = [p for p in model.parameters() if p.requires_grad]
    if aux is not None:
        params += list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, r.steps)
    rates = {"caption": r.data.caption_rate, "grounding": r.data.grounding_rate}
    sampler = Sampler(ts, r.batch_size, rates, [seed, 17])
    _train_mode(family, model, r)
    losses: list[float] = []
    bar = progress_bar(range(r.steps), desc=f"{family}: main stage", progress=progress, leave=False)
    for step in bar:
        batch = collate(ts, sampler.next())
        pos, asked, presence = batch.pop("aux_pos"), batch.pop("aux_asked"), batch.pop("aux_presence")
        out = model(**batch, output_hidden_states=aux is not None)
        loss = out.loss
        if aux is not None:
            hidden = out.hidden_states[r.aux_layer][torch.arange(len(pos)), pos]
            loss = loss + r.aux_weight * aux.loss(hidden, asked, presence)
        losses.append(optimizer_step(opt, sched, params, loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        report(callback, step + 1, r.steps, callback_every, model, lambda: _train_mode(family, model, r))
    return losses


def _train_mode(family: Family, model: Any, r: Recipe) -> None:
    model.train()
    if r.freeze_vision:
        tower_of(family, model).eval()


class _AuxHeads(torch.nn.Module):
    """Deep-supervision heads (training only): asked object and present objects."""

    def __init__(self, width: int, n_objects: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.asked = torch.nn.Linear(width, n_objects)
        self.presence = torch.nn.Linear(width, n_objects)

    def loss(self, hidden: torch.Tensor, asked: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        h = self.norm(hidden)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.presence(h), presence)
        if (asked != -100).any():
            loss = loss + torch.nn.functional.cross_entropy(self.asked(h), asked, ignore_index=-100)
        return loss


def _meta(result: TrainResult, r: Recipe) -> dict[str, Any]:
    recipe = dataclasses.asdict(r)
    recipe["data"]["synth"] = r.data.synth.to_dict()
    return {
        "family": result.family,
        "seed": result.seed,
        "recipe": recipe,
        "train_seconds": round(result.seconds, 1),
        "threads": result.threads,
        "final_loss": result.final_loss,
        "n_params": result.n_params,
        "vision_pretrain": dataclasses.asdict(result.vision_pretrain) if result.vision_pretrain else None,
        "eval_synth": r.data.synth.to_dict(),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """The library versions a checkpoint was trained with, and the CPU kernels torch
    dispatches to (``"AVX2"``, ``"AVX512"``, ...): the weights depend on all of them."""
    return {
        "torch": str(torch.__version__),  # a TorchVersion otherwise, which snapshots cannot load safely
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "vlmlens": _installed("vlmlens"),
        "python": platform.python_version(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "not installed"


def save_checkpoint(model: PreTrainedModel, processor: Any, out: str | Path) -> Path:
    """Save a trained toy (greedy 3-token generation config) and its processor.

    Returns:
        The checkpoint folder (created; files readable by everyone).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config.max_new_tokens = 3
    model.generation_config.do_sample = False
    model.save_pretrained(folder)
    save_processor(processor, folder)
    for file in folder.iterdir():
        file.chmod(0o644)  # safetensors writes 0600; installed package data must be readable
    return folder
