"""Stage 1 of every toy: pre-train the vision tower on what is where in the image.

Real VLMs start from a vision tower trained elsewhere (CLIP for LLaVA, SigLIP for
PaliGemma, a CLIP ViT for Qwen2-VL). The toys pre-train theirs on SynthPOPE ground
truth with two linear heads that are thrown away afterwards:

* object presence: multi-label classification (which of the 21 objects are in the
  image) from the mean of the features the projector reads;
* object layout: for every image token, which object covers its patch (or none).

The dense layout target is what makes a from-scratch ViT learn in a few hundred CPU
steps; it also makes image tokens carry the identity of the object under them. LLaVA
then freezes the tower; PaliGemma and Qwen2-VL keep training it end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlmlens.progress import progress_bar
from vlmlens.zoo.data import TrainSet, cell_labels
from vlmlens.zoo.tokenizer import Family

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PretrainResult:
    """Outcome of the tower pre-training (on its last 50 training batches).

    Attributes:
        steps: Optimiser steps taken.
        final_loss: Mean loss (presence BCE + layout cross-entropy).
        presence_accuracy: Per-object presence accuracy.
        layout_accuracy: Per-token layout accuracy.
    """

    steps: int
    final_loss: float
    presence_accuracy: float
    layout_accuracy: float


def tower_of(family: Family, model: nn.Module) -> nn.Module:
    """The vision tower module of a zoo model (merger included for Qwen2-VL)."""
    return model.model.visual if family == "qwen2_vl" else model.model.vision_tower


def token_cell(family: Family, model: nn.Module, *, merged: bool = True) -> int:
    """Pixels per feature side: the patch size, times the merge size for Qwen2-VL's
    merged tokens (``merged=False``: its patches, before the merger)."""
    vision = model.config.vision_config
    if family == "qwen2_vl" and merged:
        return vision.patch_size * vision.spatial_merge_size
    return vision.patch_size


def tower_features(
    family: Family, model: nn.Module, pixels: Sequence[dict[str, torch.Tensor]], *, merged: bool = True
) -> list[torch.Tensor]:
    """Per image, the token features the projector (or LM, for Qwen2-VL) receives.

    Args:
        family: Model family.
        model: The zoo model.
        pixels: Preprocessed images (:attr:`TrainSet.pixels` entries).
        merged: Qwen2-VL only: the merger's output (the LM's image tokens, row-major);
            ``False``: the tower's patch features before the merger, in the processor's
            patch order (each 2x2 merge window contiguous).

    Returns:
        One ``(tokens, width)`` tensor per image.
    """
    tower = tower_of(family, model)
    if family == "qwen2_vl":
        grid = torch.stack([p["image_grid_thw"] for p in pixels])
        out = tower(torch.cat([p["pixel_values"] for p in pixels]), grid_thw=grid)
        if not merged:
            return list(torch.split(out.last_hidden_state, grid.prod(-1).tolist()))
        sizes = (grid.prod(-1) // tower.spatial_merge_size**2).tolist()
        return list(torch.split(out.pooler_output, sizes))
    batch = torch.stack([p["pixel_values"] for p in pixels])
    if family == "llava":
        out = tower(pixel_values=batch, output_hidden_states=True)
        feats = out.hidden_states[model.config.vision_feature_layer][:, 1:]  # CLS dropped, as LLaVA does
    else:
        feats = tower(pixel_values=batch).last_hidden_state
    return list(feats)


def pretrain_vision_tower(
    family: Family,
    model: nn.Module,
    ts: TrainSet,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    freeze: bool,
    merger: bool = True,
    progress: bool = True,
) -> PretrainResult:
    """Train a zoo model's vision tower on object presence and layout.

    Args:
        family: Model family.
        model: The zoo model (its tower is trained in place).
        ts: The training set (images, presence labels, object maps).
        steps: Optimiser steps.
        batch_size: Images per step.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay).
        seed: Seed of the heads' initialisation and of the image order.
        freeze: Freeze the tower afterwards (LLaVA).
        merger: Qwen2-VL only: pre-train the 2x2 merger with the tower, on its output
            (zoo v1); ``False`` pre-trains the tower on its patch features and leaves
            the merger as initialised, like the other families' projectors (zoo v2).
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`PretrainResult`.
    """
    tower = tower_of(family, model)
    merged = merger or family != "qwen2_vl"
    cell = token_cell(family, model, merged=merged)
    layout = [
        _layout(family, model, seg, px, cell, merged) for seg, px in zip(ts.segments, ts.pixels, strict=True)
    ]
    torch.manual_seed(seed)
    width = tower_features(family, model, ts.pixels[:1], merged=merged)[0].shape[-1]
    n_objects = ts.labels.shape[1]
    presence_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_objects))
    layout_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_objects + 1))
    skip = set() if merged else {id(p) for p in tower.merger.parameters()}
    trained = [p for p in tower.parameters() if id(p) not in skip]
    params = [*trained, *presence_head.parameters(), *layout_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    rng = np.random.default_rng([seed, 3])
    order, pos = rng.permutation(len(ts.pixels)), 0
    losses: list[float] = []
    p_acc: list[float] = []
    l_acc: list[float] = []
    tower.train()
    bar = progress_bar(range(steps), desc=f"{family}: vision tower", progress=progress, leave=False)
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(ts.pixels)), 0
        idx = order[pos : pos + batch_size].tolist()
        pos += batch_size
        feats = tower_features(family, model, [ts.pixels[i] for i in idx], merged=merged)
        presence = presence_head(torch.stack([f.mean(dim=0) for f in feats]))
        target = ts.labels[idx]
        tokens = layout_head(torch.cat(feats))
        cells = torch.cat([layout[i] for i in idx])
        loss = nn.functional.binary_cross_entropy_with_logits(presence, target)
        loss = loss + nn.functional.cross_entropy(tokens, cells)
        losses.append(optimizer_step(opt, sched, params, loss))
        p_acc.append(((presence > 0).float() == target).float().mean().item())
        l_acc.append((tokens.argmax(-1) == cells).float().mean().item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", presence=f"{np.mean(p_acc[-50:]):.3f}")
    if freeze:
        tower.eval()
        for p in tower.parameters():
            p.requires_grad_(False)
    result = PretrainResult(
        steps=steps,
        final_loss=_tail(losses),
        presence_accuracy=_tail(p_acc),
        layout_accuracy=_tail(l_acc),
    )
    logger.info("%s vision tower pre-trained: %s", family, result)
    return result


def _layout(
    family: Family, model: nn.Module, segment: np.ndarray, pixels: dict[str, torch.Tensor], cell: int, merged: bool
) -> torch.Tensor:
    labels = cell_labels(_resized(segment, _processed_side(family, model, pixels)), cell)
    if not merged:
        # Qwen2-VL's processor orders the patches merge window by merge window.
        _, rows, cols = (int(x) for x in pixels["image_grid_thw"])
        m = model.config.vision_config.spatial_merge_size
        labels = labels.reshape(rows // m, m, cols // m, m).transpose(0, 2, 1, 3).reshape(-1)
    return torch.from_numpy(labels)


def _processed_side(family: Family, model: nn.Module, pixels: dict[str, torch.Tensor]) -> int:
    # LLaVA and PaliGemma resize every image to the tower's side; Qwen2-VL keeps its size
    # unless the processor's smallest or largest side rescales it (read from its grid).
    vision = model.config.vision_config
    if family == "qwen2_vl":
        return int(pixels["image_grid_thw"][1]) * vision.patch_size
    return vision.image_size


def _resized(segment: np.ndarray, side: int) -> np.ndarray:
    # The object map follows the processor's resize, nearest-neighbour.
    if segment.shape == (side, side):
        return segment
    return np.asarray(Image.fromarray(segment).resize((side, side), Image.NEAREST))


def _tail(values: list[float]) -> float:
    return float(np.mean(values[-50:])) if values else float("nan")


def optimizer_step(
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    params: Sequence[torch.Tensor],
    loss: torch.Tensor,
) -> float:
    """One training step: backward, clip the gradient norm to 1.0, optimiser and schedule.

    Returns:
        The loss as a float.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss.item()


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to 0."""
    n_warm = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        progress = (step - n_warm) / max(1, steps - n_warm)
        return 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, progress))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
