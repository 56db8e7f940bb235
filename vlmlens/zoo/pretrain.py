"""Stage 1 of toy-llava: pre-train the CLIP vision tower on object presence.

LLaVA starts from a CLIP tower trained elsewhere and keeps it frozen. The toy version
pre-trains its tower on multi-label object classification (which of the SynthPOPE
objects are in the image) from the mean of the patch features LLaVA feeds its
projector, then freezes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vlmlens.zoo.data import TrainSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PretrainResult:
    """Outcome of the tower pre-training.

    Attributes:
        steps: Optimiser steps taken.
        final_loss: Mean BCE loss over the last 50 steps.
        train_accuracy: Per-object presence accuracy on the last 50 batches.
    """

    steps: int
    final_loss: float
    train_accuracy: float


def pretrain_vision_tower(
    model: nn.Module,
    ts: TrainSet,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    feature_layer: int,
    progress: bool = True,
) -> PretrainResult:
    """Train ``model.model.vision_tower`` to tell which objects are in each image.

    Args:
        model: A ``LlavaForConditionalGeneration``.
        ts: The training set (its images and their object labels).
        steps: Optimiser steps.
        batch_size: Images per step.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay).
        seed: Seed of the head's initialisation and of the image order.
        feature_layer: The hidden-state index LLaVA reads (``vision_feature_layer``).
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`PretrainResult`.
    """
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    torch.manual_seed(seed)
    head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, ts.labels.shape[1]))
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = _warmup_cosine(opt, steps)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ts.pixels))
    pos = 0
    losses: list[float] = []
    accs: list[float] = []
    tower.train()
    bar = tqdm(range(steps), desc="llava: vision tower", disable=not progress, leave=False)
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(ts.pixels)), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        pixels = torch.stack([ts.pixels[i]["pixel_values"] for i in idx])
        target = ts.labels[idx]
        out = tower(pixel_values=pixels, output_hidden_states=True)
        feats = out.hidden_states[feature_layer][:, 1:]  # patch tokens, CLS dropped as LLaVA does
        logits = head(feats.mean(dim=1))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append(((logits > 0).float() == target).float().mean().item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", acc=f"{np.mean(accs[-50:]):.3f}")
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    result = PretrainResult(
        steps=steps,
        final_loss=float(np.mean(losses[-50:])) if losses else float("nan"),
        train_accuracy=float(np.mean(accs[-50:])) if accs else float("nan"),
    )
    logger.info("vision tower pre-trained: %s", result)
    return result


def _warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    n_warm = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        progress = (step - n_warm) / max(1, steps - n_warm)
        return 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, progress))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
