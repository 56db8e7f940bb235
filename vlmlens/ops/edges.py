"""Edge attribution patching (EAP) and exact edge patching, between text-tower components.

Circuits are edges. An edge ``u -> v`` runs from a component that writes the residual
stream (``embed``, a head ``L{l}H{h}``, an MLP ``L{l}MLP``) to a component that reads it
(the attention block of a later layer, ``L{l}ATTN``; the MLP of the same or a later layer,
``L{l}MLP``; the unembedding, ``LOGITS``). Patching the edge gives ``v`` the clean
output of ``u`` while everything else sees the corrupt run; EAP estimates every edge at
once, to first order, as

    (u's clean write - u's corrupt write) . d metric / d (v's input)   (at the corrupt run)

where ``v``'s input is the residual as ``v`` alone reads it (the input of its norm), so the
gradient runs through ``v`` only. Writes are the parts of :func:`~vlmlens.ops.decompose_resid`
and :func:`~vlmlens.ops.stack_head_results` (Gemma-2 heads frozen through their
post-attention norm). :func:`patch_edge` runs the exact patch of one edge, to check the top
estimates.

Examples:
    >>> edges = attribute_edges(model, clean, corrupt, metric)
    >>> for edge, score in edges.top(5):
    ...     exact = patch_edge(model, clean, corrupt, metric, edge)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.ops.patching import _check_layouts, _scalar
from vlmlens.sites import Point, Site, Tower

__all__ = ["EdgeScores", "attribute_edges", "patch_edge"]


@dataclass(frozen=True)
class EdgeScores:
    """EAP scores of every edge: ``scores[i, j]`` for ``senders[i] -> receivers[j]``.

    Edges that do not exist (a receiver before its sender) hold NaN.

    Attributes:
        scores: ``sender receiver`` on the metric's scale (estimated change of the metric).
        senders: ``embed``, ``L{l}H{h}``, ``L{l}MLP``.
        receivers: ``L{l}ATTN``, ``L{l}MLP``, ``LOGITS``.
        corrupt_metric: the metric on the corrupt run.
        clean_metric: the metric on the clean run.
    """

    scores: Float[Tensor, "sender receiver"]
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    corrupt_metric: float
    clean_metric: float

    def top(self, k: int = 10, *, absolute: bool = True) -> list[tuple[tuple[str, str], float]]:
        """The ``k`` edges with the largest (absolute) scores: ``[((sender, receiver), score), ...]``."""
        flat = self.scores.flatten()
        key = flat.abs() if absolute else flat
        key = torch.where(flat.isnan(), torch.full_like(key, -torch.inf), key)
        order = key.argsort(descending=True)[:k].tolist()
        n = len(self.receivers)
        return [((self.senders[i // n], self.receivers[i % n]), float(flat[i])) for i in order]


def _layer_of(name: str) -> int:
    """The layer in a component name (``L3H2``, ``L3MLP``, ``L3ATTN``); ``embed`` is before layer 0."""
    return -1 if name == "embed" else int(re.match(r"L(\d+)", name).group(1))


def _precedes(sender: str, receiver: str) -> bool:
    if receiver == "LOGITS":
        return True
    s, r = _layer_of(sender), _layer_of(receiver)
    if receiver.endswith("MLP"):  # the MLP reads after its own layer's heads
        return s < r or (s == r and not sender.endswith("MLP"))
    return s < r


def _receivers(model: Any) -> list[str]:
    names = [f"L{l}{kind}" for l in range(model.n_layers) for kind in ("ATTN", "MLP")]
    return [*names, "LOGITS"]


def _reader(model: Any, receiver: str) -> torch.nn.Module:
    """The norm module whose input is the residual as ``receiver`` alone reads it."""
    if receiver == "LOGITS":
        return model.final_norm
    part = "attn_norm" if receiver.endswith("ATTN") else "mlp_norm"
    return model.block_module(Tower.TEXT, _layer_of(receiver), part)


@contextlib.contextmanager
def _reading(modules: dict[str, torch.nn.Module], seen: dict[str, Tensor],
             add: dict[str, Tensor] | None = None) -> Iterator[None]:
    """Give each reader its own copy of its input (recorded in ``seen``; ``add`` added to it)."""

    def hook_for(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> tuple:
            x = args[0]
            if torch.is_grad_enabled() and not x.requires_grad:
                x = x.detach().requires_grad_(True)  # outside any graph (frozen weights, a set input): a leaf
            branch = x.view_as(x) if add is None or name not in add else x + add[name].to(x.device, x.dtype)
            seen[name] = branch
            return (branch, *args[1:])

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _writes(model: Any, batch: Batch) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Every sender's write to the residual (``batch seq d_model``), the logits and ``text.hook_embed``."""
    from vlmlens.ops.cache import run_with_cache
    from vlmlens.ops.logit_attribution import stack_head_results

    n = model.n_layers
    sites = [Site(Tower.TEXT, Point.RESID_PRE, 0), Site(Tower.TEXT, Point.EMBED)]
    sites += [Site(Tower.TEXT, p, l) for l in range(n) for p in (Point.RESULT, Point.MLP_OUT, Point.ATTN_OUT)]
    logits, cache = run_with_cache(model, batch, sites=sites, positions="all", device=None)
    heads, labels = stack_head_results(model, cache, return_labels=True)
    writes = {"embed": cache[sites[0]]}
    for l in range(n):
        writes |= {name: part for name, part in zip(labels, heads, strict=True) if _layer_of(name) == l}
        writes[f"L{l}MLP"] = cache[Site(Tower.TEXT, Point.MLP_OUT, l)]
    return writes, logits, cache[sites[1]]


def _receiver_grads(model: Any, corrupt: Batch, metric: Any, receivers: list[str],
                    interventions: list[Any]) -> tuple[list[Tensor | None], float]:
    """d metric / d (each receiver's own input) on the corrupt batch, and the metric's value."""
    from vlmlens.ops.interventions import applied

    readers = {name: _reader(model, name) for name in receivers}
    seen: dict[str, Tensor] = {}
    with torch.enable_grad(), applied(model, interventions, corrupt.layout), _reading(readers, seen):
        logits = model.hf_model(**corrupt.inputs).logits
        value = torch.as_tensor(metric(logits, corrupt))
        if value.numel() != 1 or not value.requires_grad:
            raise InputError("the metric must return a scalar that depends on the logits, e.g. logit_diff(yes, no)")
        grads = torch.autograd.grad(value.reshape(()), [seen[name] for name in receivers], allow_unused=True)
    return list(grads), _scalar(value.detach())


@no_type_check
def attribute_edges(model: Any, clean: Batch, corrupt: Batch, metric: Any, *, ig_steps: int = 0) -> EdgeScores:
    """EAP scores of every edge between text-tower components.

    Costs three forwards (the clean and corrupt writes, then the corrupt run with its
    graph) and one backward; with ``ig_steps=k``, ``k`` forwards and backwards with its graph.

    Args:
        clean: the clean batch (``model.prepare``).
        corrupt: the corrupt batch, of the same layout.
        metric: ``metric(logits, batch) -> scalar`` (e.g. ``logit_diff(yes, no)``).
        ig_steps: 0 for EAP; ``k > 0`` for EAP-IG (Hanna et al. 2024): each receiver's
            gradient averaged over ``k`` points on the line from the corrupt to the clean
            input embeddings (as :func:`~vlmlens.ops.attribute_residual`'s ``ig_steps``).
    """
    from vlmlens.ops.attribution import _check_steps, embedding_path, ig_alphas

    _check_layouts(clean, corrupt)
    steps = _check_steps(ig_steps)
    clean_writes, clean_logits, clean_embed = _writes(model, clean)
    corrupt_writes, corrupt_logits, corrupt_embed = _writes(model, corrupt)
    receivers = _receivers(model)
    if steps:
        path = embedding_path(model, clean, corrupt, ends=(corrupt_embed, clean_embed))
        grads = [None] * len(receivers)
        for alpha in ig_alphas(steps):
            found, _ = _receiver_grads(model, corrupt, metric, receivers, [path(alpha)])
            grads = [g if f is None else f.float() / steps + (0.0 if g is None else g) for g, f in zip(grads, found)]
    else:
        grads, _ = _receiver_grads(model, corrupt, metric, receivers, [])
    senders = list(clean_writes)
    scores = torch.full((len(senders), len(receivers)), float("nan"))
    for i, sender in enumerate(senders):
        delta = (clean_writes[sender] - corrupt_writes[sender]).float()
        for j, (receiver, grad) in enumerate(zip(receivers, grads, strict=True)):
            if _precedes(sender, receiver):
                scores[i, j] = 0.0 if grad is None else float((delta * grad.float().to(delta.device)).sum())
    return EdgeScores(scores, tuple(senders), tuple(receivers), corrupt_metric=_scalar(metric(corrupt_logits, corrupt)),
                      clean_metric=_scalar(metric(clean_logits, clean)))


@no_type_check
def patch_edge(model: Any, clean: Batch, corrupt: Batch, metric: Any, edge: tuple[str, str], *,
               scale: float = 1.0) -> float:
    """The metric after patching one edge exactly: ``receiver`` reads ``sender``'s clean write.

    The receiver's input becomes its corrupt input plus ``scale * (clean - corrupt write)``
    of the sender; every other component reads the corrupt run (and the receiver's own
    downstream effects follow). Returns the metric's value.
    """
    _check_layouts(clean, corrupt)
    sender, receiver = edge
    if receiver not in _receivers(model):
        raise InputError(f"unknown receiver {receiver!r}; receivers: L{{l}}ATTN, L{{l}}MLP, LOGITS")
    clean_writes, *_ = _writes(model, clean)
    if sender not in clean_writes:
        raise InputError(f"unknown sender {sender!r}; senders: embed, L{{l}}H{{h}}, L{{l}}MLP")
    if not _precedes(sender, receiver):
        raise InputError(f"{sender} does not write before {receiver} reads; no such edge")
    corrupt_writes, *_ = _writes(model, corrupt)
    delta = scale * (clean_writes[sender] - corrupt_writes[sender])
    with torch.no_grad(), _reading({receiver: _reader(model, receiver)}, {}, add={receiver: delta}):
        logits = model.hf_model(**corrupt.inputs).logits
    return _scalar(metric(logits, corrupt))
