"""Planted controls: models whose answer provably runs through known units, or through none.

A localisation method earns trust by finding what was planted. :func:`plant_bottleneck`
rewires a gated MLP so that a few named neurons read zero-mean features of the MLP's input
on calibration questions (their signs differ between questions) and write along the answer
direction (the final norm's gain times the yes-minus-no unembedding), half towards yes and
half towards no, while no other neuron of the layer writes along it: the yes/no decision
is carried by those neurons. :func:`plant_distributed` rewires every neuron of the layer
the same way, the same total write spread over all of them: no small set carries it. Both
edit the weights in place (use a fresh model); :func:`plant_bottleneck` returns the neurons
it planted.

Label the behaviour with the edited model's own answers (:func:`self_labelled`) so that
"answering correctly" means "answering as the planted units decide".

Examples:
    >>> from vlmlens.testing import tiny_vlm
    >>> from vlmlens.data import synth_pope
    >>> model = tiny_vlm("llava")
    >>> calibration = Behaviour.from_dataset(synth_pope("adversarial", n_images=4, seed=5))
    >>> plant_bottleneck(model, calibration, layer=1, neurons=(3, 40, 77))
    (3, 40, 77)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmlens.circuits.behaviour import AnswerIds, Behaviour
from vlmlens.errors import InputError
from vlmlens.sites import Tower

__all__ = ["answer_direction", "plant_bottleneck", "plant_distributed", "self_labelled"]


def answer_direction(model: Any) -> Tensor:
    """The unit residual direction that raises yes over no most through the final norm."""
    answers = AnswerIds.of(model)
    weight = model.unembed.weight.detach().float()
    u = weight[list(answers.yes)].mean(0) - weight[list(answers.no)].mean(0)
    gain = model.final_norm.weight.detach().float() + model.adapter.text.rms_offset
    v = gain * u
    return v / v.norm()


def _part(model: Any, layer: int, part: str) -> torch.nn.Module:
    if not 0 <= layer < model.n_layers:
        raise InputError(f"layer must be a text layer 0..{model.n_layers - 1}, got {layer}")
    return model.block_module(Tower.TEXT, layer, part)


def _mlp_inputs(model: Any, behaviour: Behaviour, layer: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The MLP's input (its norm's output) and the residual (its norm's input) at each last prompt position."""
    seen: list[tuple[Tensor, Tensor]] = []

    def keep(module: Any, args: Any, out: Tensor) -> None:
        seen.append((out.detach().float(), args[0].detach().float()))

    handle = _part(model, layer, "mlp_norm").register_forward_hook(keep)
    inputs, resids = [], []
    try:
        for _, batch in behaviour.batches(model, batch_size):
            seen.clear()
            model.forward(batch)
            last = torch.as_tensor(batch.layout.last_prompt)
            rows = torch.arange(len(last))
            inputs.append(seen[0][0][rows, last].cpu())
            resids.append(seen[0][1][rows, last].cpu())
    finally:
        handle.remove()
    return torch.cat(inputs), torch.cat(resids)


GATE = 4.0
"""Where a rewired neuron's gate sits for every input: its nonlinearity is ~ GATE there (SiLU, GELU)."""


def _rewire(model: Any, layer: int, neurons: Sequence[int], behaviour: Behaviour, batch_size: int,
            seed: int) -> float:
    """Make each neuron compute ~ ``GATE * f(x)``, ``f`` a zero-mean, unit-std feature of the MLP input.

    ``f(x) = d . x`` with ``d`` a random mixture of the input's principal directions on
    ``behaviour``, orthogonal to the mean input ``m`` (so ``d . x = d . (x - m)``: zero mean,
    no bias needed), scaled to unit std. The gate reads ``m`` (``GATE * m . x / |m|^2``), so
    it sits near ``GATE`` for every input. Returns the residual's mean norm there.
    """
    x, resid = _mlp_inputs(model, behaviour, layer, batch_size)
    center = x.mean(0)
    unit = center / center.norm()
    xc = x - center
    _, sv, vt = torch.linalg.svd(xc, full_matrices=False)
    rank = int((sv > 1e-6 * sv[0]).sum())
    if rank == 0:
        raise InputError("the calibration questions give identical MLP inputs; use questions about different images")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(neurons), rank, generator=g) @ vt[:rank]
    directions = directions - torch.outer(directions @ unit, unit)
    directions = directions / (xc @ directions.T).std(0)[:, None]
    gate_proj, up_proj = _part(model, layer, "mlp_in"), _part(model, layer, "mlp_up")
    for n, d in zip(neurons, directions, strict=True):
        gate_proj.weight[n] = (GATE * center / center.pow(2).sum()).to(gate_proj.weight)
        up_proj.weight[n] = d.to(up_proj.weight)
    return float(resid.norm(dim=-1).mean())


def _check_layer(model: Any, layer: int) -> int:
    if model.adapter.text.block.mlp_up is None:
        raise InputError(f"planting needs a gated MLP (gate and up projections); {model.family} has none")
    return _part(model, layer, "mlp_down").weight.shape[1]


@torch.no_grad()
def plant_bottleneck(model: Any, behaviour: Behaviour, *, layer: int, neurons: Sequence[int], strength: float = 1.0,
                     batch_size: int = 8, seed: int = 0) -> tuple[int, ...]:
    """Make ``neurons`` of ``layer``'s MLP carry the answer (in place).

    Each planted neuron is rewired to read a zero-mean, unit-std feature of its input on
    the ``behaviour`` questions (a random mixture of the input's principal directions, so
    its sign differs between questions) and to write along the answer direction, signs
    alternating, so that the planted writes together have a std of ``strength`` times the
    residual's norm there; every other column of the down projection loses its component
    along that direction. The answer is then decided by the planted neurons' activations.

    Returns:
        The planted neurons, as given.
    """
    width = _check_layer(model, layer)
    chosen = tuple(int(n) for n in neurons)
    if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= n < width for n in chosen):
        raise InputError(f"neurons must be distinct indices in 0..{width - 1}, got {list(neurons)}")
    resid = _rewire(model, layer, chosen, behaviour, batch_size, seed)
    down = _part(model, layer, "mlp_down")
    v = answer_direction(model).to(down.weight.device)
    w = down.weight.float()
    w = w - torch.outer(v, v @ w)  # no other neuron of the layer writes along the answer direction
    each = strength * resid / (GATE * len(chosen) ** 0.5)  # the planted writes' std ~ strength x the residual
    for i, n in enumerate(chosen):
        w[:, n] = (1.0 if i % 2 == 0 else -1.0) * each * v
    down.weight.copy_(w.to(down.weight.dtype))
    return chosen


@torch.no_grad()
def plant_distributed(model: Any, behaviour: Behaviour, *, layer: int, strength: float = 1.0,
                      batch_size: int = 8, seed: int = 0) -> None:
    """Spread the answer over all of ``layer``'s neurons (in place): the distributed control.

    Every neuron is rewired as in :func:`plant_bottleneck` (its own random feature) and
    writes along the answer direction with a random sign, the writes together with the
    same std as :func:`plant_bottleneck`'s at the same ``strength``.
    """
    width = _check_layer(model, layer)
    resid = _rewire(model, layer, range(width), behaviour, batch_size, seed)
    down = _part(model, layer, "mlp_down")
    v = answer_direction(model).to(down.weight.device)
    w = down.weight.float()
    w = w - torch.outer(v, v @ w)
    g = torch.Generator().manual_seed(seed + 1)
    signs = torch.where(torch.rand(width, generator=g) < 0.5, -1.0, 1.0).to(w.device)
    w = w + torch.outer(v, signs * strength * resid / (GATE * width**0.5))
    down.weight.copy_(w.to(down.weight.dtype))


@torch.no_grad()
def self_labelled(model: Any, behaviour: Behaviour, *, batch_size: int = 8) -> Behaviour:
    """The same questions, labelled with the model's own answers (sign of the yes-no margin)."""
    answers = AnswerIds.of(model)
    labels = []
    for _, batch in behaviour.batches(model, batch_size):
        labels += ["yes" if m > 0 else "no" for m in answers.margin(model.forward(batch), batch).tolist()]
    return dataclasses.replace(behaviour, labels=tuple(labels), source=f"{behaviour.source} [labels: the model's answers]")
