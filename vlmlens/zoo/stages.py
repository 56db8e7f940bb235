"""Training stages: which parts of a toy model learn, on which examples, with or without images.

A zoo v2 recipe (:mod:`vlmlens.zoo.fusion`) is a sequence of :class:`Stage` values run by
:func:`run_stage`. A stage names the parts that learn (the rest are frozen), the mix of
example kinds it samples, and whether the images are withheld (text-only language-model
pre-training on the same questions and answers).

Examples:
    >>> from vlmlens.zoo.stages import Stage
    >>> Stage(name="align", steps=100, lr=2e-3, train=("projector",), caption_rate=1.0, grounding_rate=0.0).train
    ('projector',)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmlens.progress import progress_bar
from vlmlens.zoo.data import TrainSet, collate
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.pretrain import optimizer_step, warmup_cosine
from vlmlens.zoo.tokenizer import Family

logger = logging.getLogger(__name__)

Part = Literal["tower", "projector", "lm"]
PARTS: tuple[Part, ...] = ("tower", "projector", "lm")

#: Keys of :func:`~vlmlens.zoo.data.collate` batches that are not model inputs.
AUX_KEYS = ("aux_pos", "aux_asked", "aux_presence")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One training stage.

    Attributes:
        name: Short name, e.g. ``"lm-text"``, ``"align"``, ``"instruct"``.
        steps: Optimiser steps.
        lr: Peak AdamW learning rate (linear warm-up over ``warmup`` of the steps, then
            cosine decay to 0).
        train: The parts that learn: ``"tower"`` (the vision encoder; for Qwen2-VL without
            its merger), ``"projector"`` (LLaVA/PaliGemma ``multi_modal_projector``,
            Qwen2-VL's 2x2 patch merger) and ``"lm"`` (the language model and its head).
            Every other part is frozen.
        caption_rate: Share of caption examples in each batch.
        grounding_rate: Share of grounding examples in each batch (the rest are POPE
            questions).
        text_only: Withhold the images (the language model learns the questions' and
            answers' text alone, hence their priors); only ``"lm"`` may learn.
        warmup: Share of the steps spent on the linear warm-up (``int(steps * warmup)``
            steps, at least one; :func:`~vlmlens.zoo.pretrain.warmup_cosine`).
        tower_lr_scale: The tower's peak learning rate as a multiple of ``lr`` when the
            stage trains it (vision encoders fine-tuned end to end are often given a lower
            rate than the LM, e.g. 0.2x in LLaVA-OneVision); 1.0 trains every part alike.
    """

    name: str
    steps: int
    lr: float
    train: tuple[Part, ...]
    caption_rate: float = 0.25
    grounding_rate: float = 0.2
    text_only: bool = False
    warmup: float = 0.05
    tower_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ZooError(f"Stage {self.name!r}: steps must be >= 1; got {self.steps}.")
        if self.lr <= 0:
            raise ZooError(f"Stage {self.name!r}: lr must be positive; got {self.lr}.")
        if not self.train or any(p not in PARTS for p in self.train):
            raise ZooError(
                f"Stage {self.name!r}: train must name some of {', '.join(PARTS)}; got {self.train!r}."
            )
        for name in ("caption_rate", "grounding_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ZooError(f"Stage {self.name!r}: {name} must be in [0, 1]; got {getattr(self, name)}.")
        if not 0.0 <= self.warmup < 1.0:
            raise ZooError(f"Stage {self.name!r}: warmup must be in [0, 1); got {self.warmup}.")
        if not 0.0 < self.tower_lr_scale <= 1.0:
            raise ZooError(f"Stage {self.name!r}: tower_lr_scale must be in (0, 1]; got {self.tower_lr_scale}.")
        if self.caption_rate + self.grounding_rate > 1.0:
            raise ZooError(
                f"Stage {self.name!r}: caption_rate + grounding_rate must be <= 1; "
                f"got {self.caption_rate} + {self.grounding_rate}."
            )
        if self.text_only and self.train != ("lm",):
            raise ZooError(
                f"Stage {self.name!r}: a text-only stage can train only the language model "
                f"(the other parts see no input); got train={self.train!r}."
            )


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What a stage did.

    Attributes:
        name: The stage's name.
        steps: Optimiser steps taken.
        seconds: Wall-clock seconds.
        final_loss: Mean loss over the last 50 steps.
        losses: Loss of every step.
    """

    name: str
    steps: int
    seconds: float
    final_loss: float
    losses: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class StageState:
    """A stage interrupted after :attr:`step` steps: enough to continue it bit for bit
    (:mod:`vlmlens.zoo.resume` keeps it with the weights).

    Attributes:
        losses: Loss of each step taken.
        seconds: Wall-clock seconds spent on them.
        optimizer: The AdamW state (``state_dict``).
        scheduler: The learning-rate schedule's state.
        sampler: The example order's state (:meth:`Sampler.state`).
    """

    losses: tuple[float, ...]
    seconds: float
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    sampler: dict[str, Any]

    @property
    def step(self) -> int:
        """Steps taken (one loss each)."""
        return len(self.losses)


def part_modules(family: Family, model: nn.Module) -> dict[Part, tuple[nn.Module, ...]]:
    """The modules of each part of a zoo model.

    Raises:
        ZooError: If the parts do not cover every parameter of the model.
    """
    inner = model.model
    if family == "qwen2_vl":
        visual = inner.visual
        parts: dict[Part, tuple[nn.Module, ...]] = {
            "tower": (visual.patch_embed, visual.blocks),
            "projector": (visual.merger,),
            "lm": (inner.language_model, model.lm_head),
        }
    else:
        parts = {
            "tower": (inner.vision_tower,),
            "projector": (inner.multi_modal_projector,),
            "lm": (inner.language_model, model.lm_head),
        }
    covered = {id(p) for mods in parts.values() for m in mods for p in m.parameters()}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise ZooError(f"{family}: parameters outside the tower/projector/lm parts: {missing[:5]}.")
    return parts


def set_trainable(family: Family, model: nn.Module, train: Sequence[Part]) -> list[nn.Parameter]:
    """Unfreeze the named parts, freeze the rest; the trainable parameters in model order."""
    chosen = {id(p) for part in train for m in part_modules(family, model)[part] for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(family: Family, model: nn.Module, stage: Stage, params: list[nn.Parameter]) -> list[dict]:
    """AdamW parameter groups of a stage: one group at ``stage.lr``, or, when the stage
    trains the tower with ``tower_lr_scale < 1``, the tower's parameters in a second group
    at ``stage.lr * tower_lr_scale`` (both keep model order)."""
    if stage.tower_lr_scale == 1.0 or "tower" not in stage.train:
        return [{"params": params, "lr": stage.lr}]
    tower = {id(p) for m in part_modules(family, model)["tower"] for p in m.parameters()}
    return [
        {"params": [p for p in params if id(p) not in tower], "lr": stage.lr},
        {"params": [p for p in params if id(p) in tower], "lr": stage.lr * stage.tower_lr_scale},
    ]


class Sampler:
    """Deterministic batches with a fixed number of each kind, epoch-wise shuffled.

    Args:
        ts: The training set.
        batch_size: Examples per batch.
        rates: Share of each non-QA kind (``"caption"``, ``"grounding"``); QA fills the rest.
        seed: Seed (or seed sequence) of the order.
    """

    def __init__(self, ts: TrainSet, batch_size: int, rates: dict[str, float], seed: int | Sequence[int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.pools = {k: np.array(ts.by_kind(k)) for k in ("qa", *rates)}
        self.counts = {k: round(batch_size * r) if len(self.pools[k]) else 0 for k, r in rates.items()}
        self.counts["qa"] = batch_size - sum(self.counts.values())
        self.orders = {k: self.rng.permutation(v) for k, v in self.pools.items()}
        self.pos = {k: 0 for k in self.pools}

    def _take(self, kind: str, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.pos[kind] >= len(self.orders[kind]):
                self.orders[kind] = self.rng.permutation(self.pools[kind])
                self.pos[kind] = 0
            take = min(n - len(out), len(self.orders[kind]) - self.pos[kind])
            out.extend(self.orders[kind][self.pos[kind] : self.pos[kind] + take].tolist())
            self.pos[kind] += take
        return out

    def next(self) -> list[int]:
        """The example indices of the next batch."""
        return [i for kind, n in self.counts.items() for i in self._take(kind, n)]

    def state(self) -> dict[str, Any]:
        """The order's state (random generator, current permutations, positions)."""
        return {
            "rng": self.rng.bit_generator.state,
            "orders": {k: torch.from_numpy(v.copy()) for k, v in self.orders.items()},
            "pos": dict(self.pos),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` of a sampler built with the same arguments."""
        self.rng.bit_generator.state = state["rng"]
        self.orders = {k: v.numpy() for k, v in state["orders"].items()}
        self.pos = dict(state["pos"])


def run_stage(
    family: Family,
    model: nn.Module,
    ts: TrainSet,
    stage: Stage,
    *,
    seed: int,
    index: int,
    batch_size: int,
    weight_decay: float,
    progress: bool = True,
    callback: Callable[[int, nn.Module], None] | None = None,
    callback_every: int = 100,
    start: StageState | None = None,
    snapshot: Callable[[StageState], None] | None = None,
    snapshot_every: int = 100,
) -> StageResult:
    """Train a model for one stage (AdamW, warm-up + cosine, gradient clipping 1.0).

    Args:
        family: Model family.
        model: The model, trained in place; frozen parts are kept in eval mode.
        ts: The training set.
        stage: The stage.
        seed: Training seed.
        index: The stage's position in its recipe (seeds its example order).
        batch_size: Examples per step.
        weight_decay: AdamW weight decay.
        progress: Show a tqdm progress bar.
        callback: Called as ``callback(step, model)`` every ``callback_every`` steps and
            after the last, in eval mode and without gradients.
        callback_every: Steps between callback calls.
        start: Continue an interrupted run of this stage from its state (the model must
            hold the weights it had then); ``None`` starts the stage.
        snapshot: Called with the stage's state every ``snapshot_every`` steps (not
            after the last), e.g. to save it (:mod:`vlmlens.zoo.resume`).
        snapshot_every: Steps between snapshots.

    Returns:
        A :class:`StageResult`.
    """
    began = time.perf_counter()
    params = set_trainable(family, model, stage.train)
    opt = torch.optim.AdamW(param_groups(family, model, stage, params), weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, stage.steps, stage.warmup)
    rates = {"caption": stage.caption_rate, "grounding": stage.grounding_rate}
    sampler = Sampler(ts, batch_size, rates, [seed, 17, index])
    losses: list[float] = []
    earlier = 0.0
    if start is not None:
        opt.load_state_dict(start.optimizer)
        sched.load_state_dict(start.scheduler)
        sampler.restore(start.sampler)
        losses, earlier = list(start.losses), start.seconds
    _train_mode(family, model, stage.train)
    bar = progress_bar(range(start.step if start is not None else 0, stage.steps), desc=f"{family}: {stage.name}", progress=progress, leave=False)
    for step in bar:
        batch = collate(ts, sampler.next(), text_only=stage.text_only)
        for key in AUX_KEYS:
            batch.pop(key)
        loss = model(**batch).loss
        losses.append(optimizer_step(opt, sched, params, loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        report(callback, step + 1, stage.steps, callback_every, model, lambda: _train_mode(family, model, stage.train))
        if snapshot is not None and (step + 1) % snapshot_every == 0 and step + 1 < stage.steps:
            state = StageState(
                losses=tuple(losses),
                seconds=earlier + time.perf_counter() - began,
                optimizer=opt.state_dict(),
                scheduler=sched.state_dict(),
                sampler=sampler.state(),
            )
            snapshot(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    result = StageResult(
        name=stage.name,
        steps=stage.steps,
        seconds=earlier + time.perf_counter() - began,
        final_loss=float(np.mean(losses[-50:])),
        losses=tuple(losses),
    )
    logger.info("%s stage %s: %d steps in %.0f s, final loss %.3f", family, stage.name, stage.steps, result.seconds, result.final_loss)
    return result


def report(
    callback: Callable[[int, nn.Module], None] | None,
    step: int,
    steps: int,
    every: int,
    model: nn.Module,
    resume: Callable[[], None],
) -> None:
    """Call ``callback(step, model)`` every ``every`` steps and after the last one, in
    eval mode without gradients, then ``resume()`` (back to training mode)."""
    if callback is None or (step % every and step != steps):
        return
    model.eval()
    with torch.no_grad():
        callback(step, model)
    resume()


def _train_mode(family: Family, model: nn.Module, train: Sequence[Part]) -> None:
    model.train()
    for part, modules in part_modules(family, model).items():
        if part not in train:
            for m in modules:
                m.eval()
