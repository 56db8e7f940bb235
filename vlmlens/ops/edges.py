"""Edge attribution patching (EAP) and exact edge patching, between text-tower components.

Circuits are edges. An edge ``u -> v`` runs from a component that writes the residual
stream (``embed``, a head ``L{l}H{h}``, an MLP ``L{l}MLP``) to a component that reads it.
Readers come at two grains (``receivers=``):

- ``"blocks"``: the attention block of a later layer (``L{l}ATTN``), the MLP of the same or
  a later layer (``L{l}MLP``) and the unembedding (``LOGITS``);
- ``"heads"``: the attention block split into what each head reads: the query of query
  head ``h`` (``L{l}H{h}Q``) and the key and value of key-value head ``g`` (``L{l}KV{g}K``,
  ``L{l}KV{g}V``; with grouped-query attention ``g`` is shared by several query heads, with
  plain multi-head attention ``g`` is head ``g``), plus ``L{l}MLP`` and ``LOGITS``.

Patching the edge gives ``v`` the clean output of ``u`` while everything else sees the
corrupt run; EAP estimates every edge at once, to first order, as

    (u's clean write - u's corrupt write) . d metric / d (v's input)   (at the corrupt run)

where ``v``'s input is the residual as ``v`` alone reads it (the input of its norm; for a
head's query, key or value, the norm's input as that head's projection alone reads it), so
the gradient runs through ``v`` only. Writes are the parts of
:func:`~vlmlens.ops.decompose_resid` and :func:`~vlmlens.ops.stack_head_results` (Gemma-2
heads frozen through their post-attention norm). :func:`patch_edge` runs the exact patch of
one edge, to check the top estimates.

Examples:
    >>> edges = attribute_edges(model, clean, corrupt, metric, receivers="heads")
    >>> for edge, score in edges.top(5):
    ...     exact = patch_edge(model, clean, corrupt, metric, edge)
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.errors import InputError, SiteNotFoundError
from vlmlens.inputs import Batch
from vlmlens.ops.logit_attribution import _in_memory
from vlmlens.ops.patching import _check_layouts, _scalar
from vlmlens.sites import Point, Site, Tower

__all__ = ["EdgeScores", "attribute_edges", "patch_edge"]

Grain = Literal["blocks", "heads"]
PROJECTIONS = ("q_proj", "k_proj", "v_proj")
SCORE_CHUNK = 64
"""Receivers (and senders) scored per matrix product: bounds the memory of the gradients held at once."""
_HEAD_RECEIVER = re.compile(r"L(\d+)(?:H(\d+)Q|KV(\d+)([KV]))$")


@dataclass(frozen=True)
class EdgeScores:
    """EAP scores of every edge: ``scores[i, j]`` for ``senders[i] -> receivers[j]``.

    Edges that do not exist (a receiver before its sender) hold NaN.

    Attributes:
        scores: ``sender receiver`` on the metric's scale (estimated change of the metric).
        senders: ``embed``, ``L{l}H{h}``, ``L{l}MLP``.
        receivers: ``L{l}ATTN`` (or, per head, ``L{l}H{h}Q``, ``L{l}KV{g}K``, ``L{l}KV{g}V``),
            ``L{l}MLP``, ``LOGITS``.
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
    """The layer in a component name (``L3H2``, ``L3MLP``, ``L3ATTN``, ``L3KV0K``); ``embed`` is before layer 0."""
    return -1 if name == "embed" else int(re.match(r"L(\d+)", name).group(1))


def _exists(senders: list[str] | tuple[str, ...], receivers: list[str] | tuple[str, ...]) -> Tensor:
    """``[i, j]``: whether ``senders[i]`` writes before ``receivers[j]`` reads (the MLP reads after its own layer's heads)."""
    sender = torch.tensor([_layer_of(n) for n in senders])[:, None]
    sender_mlp = torch.tensor([n.endswith("MLP") for n in senders])[:, None]
    logits = torch.tensor([n == "LOGITS" for n in receivers])[None]
    receiver = torch.tensor([0 if n == "LOGITS" else _layer_of(n) for n in receivers])[None]
    receiver_mlp = torch.tensor([n.endswith("MLP") for n in receivers])[None]
    return logits | (sender < receiver) | (receiver_mlp & (sender == receiver) & ~sender_mlp)


def _receivers(model: Any, grain: str) -> list[str]:
    if grain not in ("blocks", "heads"):
        raise InputError(f"receivers must be 'blocks' or 'heads', got {grain!r}")
    names = []
    for l in range(model.n_layers):
        if grain == "heads":
            names += [f"L{l}H{h}Q" for h in range(model.n_heads)]
            names += [f"L{l}KV{g}{kind}" for kind in "KV" for g in range(model.n_kv_heads)]
        else:
            names.append(f"L{l}ATTN")
        names.append(f"L{l}MLP")
    return [*names, "LOGITS"]


def _head_receiver(name: str) -> tuple[int, str, int] | None:
    """``(layer, projection part, head)`` of a per-head receiver; ``None`` for a block-level one."""
    match = _HEAD_RECEIVER.match(name)
    if match is None:
        return None
    layer, query, kv, kind = match.groups()
    return (int(layer), "q_proj", int(query)) if query is not None else (int(layer), f"{kind.lower()}_proj", int(kv))


def _projection(model: Any, layer: int, part: str) -> torch.nn.Module:
    """A text layer's separate query, key or value projection (per-head receivers need them)."""
    try:
        return model.block_module(Tower.TEXT, layer, part)
    except SiteNotFoundError as error:
        raise InputError(f"per-head receivers need separate q/k/v projections, and this {model.family} text tower "
                         f"has no {part}; use receivers='blocks'") from error


def _head_rows(model: Any, part: str, head: int, width: int) -> slice:
    """The output features of one head in a ``part`` projection with ``width`` outputs."""
    size = width // (model.n_heads if part == "q_proj" else model.n_kv_heads)
    return slice(head * size, (head + 1) * size)


def _reader(model: Any, receiver: str) -> torch.nn.Module:
    """The norm module whose input is the residual as ``receiver`` reads it (a head: with the other heads)."""
    if receiver == "LOGITS":
        return model.final_norm
    part = "mlp_norm" if receiver.endswith("MLP") else "attn_norm"
    return model.block_module(Tower.TEXT, _layer_of(receiver), part)


@contextlib.contextmanager
def _hooked(handles: list[Any]) -> Iterator[None]:
    """Remove the hooks behind ``handles`` when the block ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _reading(modules: dict[str, torch.nn.Module], seen: dict[str, Tensor],
             add: dict[str, Tensor] | None = None) -> contextlib.AbstractContextManager:
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

    return _hooked([m.register_forward_pre_hook(hook_for(name)) for name, m in modules.items()])


def _recording(modules: dict[Any, torch.nn.Module], outputs: dict[Any, Tensor]) -> contextlib.AbstractContextManager:
    """Record each module's output under its key."""

    def hook_for(key: Any):
        def hook(module: torch.nn.Module, args: tuple, output: Tensor) -> None:
            outputs[key] = output

        return hook

    return _hooked([m.register_forward_hook(hook_for(key)) for key, m in modules.items()])


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


def _head_grads(model: Any, heads: dict[str, tuple[int, str, int]], inputs: dict[str, Tensor],
                projected: dict[tuple[int, str], Tensor | None]) -> Iterator[tuple[str, Tensor | None]]:
    """d metric / d (the attention norm's input as one head's projection alone reads it), per head receiver.

    With ``x`` the norm's input and ``g`` the metric's gradient at the projection's output,
    that is ``J_norm(x)^T W_h^T g_h`` (``W_h``, ``g_h``: the head's rows): the head's share of
    the block's input gradient, which is the sum over all heads' queries, keys and values.
    """
    for layer in sorted({layer for layer, _, _ in heads.values()}):
        leaf = inputs[f"L{layer}ATTN"].detach().float().requires_grad_(True)
        with torch.enable_grad():
            normed = model.block_module(Tower.TEXT, layer, "attn_norm")(leaf)
        for name, (at, part, head) in heads.items():
            if at != layer:
                continue
            grad = projected[(layer, part)]
            if grad is None:  # the metric does not depend on this projection
                yield name, None
                continue
            weight = _in_memory(_projection(model, layer, part).weight, f"the text {part} of layer {layer}")
            rows = _head_rows(model, part, head, weight.shape[0])
            back = grad[..., rows].float() @ weight[rows].float().to(grad.device)
            yield name, torch.autograd.grad(normed, leaf, back.to(normed.dtype), retain_graph=True)[0]


def _receiver_grads(model: Any, corrupt: Batch, metric: Any, receivers: list[str],
                    interventions: list[Any]) -> tuple[Iterator[tuple[str, Tensor | None]], float]:
    """d metric / d (each receiver's own input) on the corrupt batch, one receiver at a time, and the metric."""
    from vlmlens.ops.interventions import applied

    heads = {name: found for name in receivers if (found := _head_receiver(name)) is not None}
    plain = [name for name in receivers if name not in heads]
    layers = sorted({layer for layer, _, _ in heads.values()})
    readers = {name: _reader(model, name) for name in plain} | {f"L{l}ATTN": _reader(model, f"L{l}ATTN") for l in layers}
    projections = {(l, part): _projection(model, l, part) for l in layers for part in PROJECTIONS}
    seen: dict[str, Tensor] = {}
    outputs: dict[tuple[int, str], Tensor] = {}
    with (torch.enable_grad(), applied(model, interventions, corrupt.layout), _reading(readers, seen),
          _recording(projections, outputs)):
        logits = model.hf_model(**corrupt.inputs).logits
        value = torch.as_tensor(metric(logits, corrupt))
        if value.numel() != 1 or not value.requires_grad:
            raise InputError("the metric must return a scalar that depends on the logits, e.g. logit_diff(yes, no)")
        targets = [seen[name] for name in plain] + [outputs[key] for key in projections]
        grads = torch.autograd.grad(value.reshape(()), targets, allow_unused=True)
    found = dict(zip(plain, grads[:len(plain)], strict=True))
    projected = dict(zip(projections, grads[len(plain):], strict=True))
    return itertools.chain(found.items(), _head_grads(model, heads, seen, projected)), _scalar(value.detach())


@no_type_check
def attribute_edges(model: Any, clean: Batch, corrupt: Batch, metric: Any, *, ig_steps: int = 0,
                    receivers: Grain = "blocks") -> EdgeScores:
    """EAP scores of every edge between text-tower components.

    Costs three forwards (the clean and corrupt writes, then the corrupt run with its
    graph) and one backward; with ``ig_steps=k``, ``k`` forwards and backwards with its graph.
    Per-head receivers add, per layer, one vector-Jacobian product through the attention
    norm for each query and key-value head.

    Args:
        clean: the clean batch (``model.prepare``).
        corrupt: the corrupt batch, of the same layout.
        metric: ``metric(logits, batch) -> scalar`` (e.g. ``logit_diff(yes, no)``).
        ig_steps: 0 for EAP; ``k > 0`` for EAP-IG (Hanna et al. 2024): each receiver's
            gradient averaged over ``k`` points on the line from the corrupt to the clean
            input embeddings (as :func:`~vlmlens.ops.attribute_residual`'s ``ig_steps``).
        receivers: ``"blocks"`` (``L{l}ATTN``, ``L{l}MLP``, ``LOGITS``) or ``"heads"``
            (each head's query, key and value instead of ``L{l}ATTN``). A block's score is
            the sum of its heads' query, key and value scores.
    """
    from vlmlens.ops.attribution import _check_steps, embedding_path, ig_alphas

    _check_layouts(clean, corrupt)
    steps = _check_steps(ig_steps)
    names = _receivers(model, receivers)
    if receivers == "heads":  # before any forward: the per-head gradients read the projections' weights
        for layer in range(model.n_layers):
            for part in PROJECTIONS:
                _in_memory(_projection(model, layer, part).weight, f"the text {part} of layer {layer}")
    clean_writes, clean_logits, clean_embed = _writes(model, clean)
    corrupt_writes, corrupt_logits, corrupt_embed = _writes(model, corrupt)
    senders = list(clean_writes)
    deltas = _deltas(clean_writes, corrupt_writes)
    del clean_writes, corrupt_writes
    column = {name: j for j, name in enumerate(names)}
    scores = torch.zeros(len(senders), len(names), dtype=torch.float64)
    path = embedding_path(model, clean, corrupt, ends=(corrupt_embed, clean_embed)) if steps else None
    for alpha in ig_alphas(steps) if steps else [None]:
        grads, _ = _receiver_grads(model, corrupt, metric, names, [] if path is None else [path(alpha)])
        _add_scores(scores, deltas, grads, column, weight=1.0 / max(steps, 1))
    exists = _exists(senders, names)
    return EdgeScores(scores.float().masked_fill(~exists, float("nan")), tuple(senders), tuple(names),
                      corrupt_metric=_scalar(metric(corrupt_logits, corrupt)),
                      clean_metric=_scalar(metric(clean_logits, clean)))


def _deltas(clean: dict[str, Tensor], corrupt: dict[str, Tensor]) -> Float[Tensor, "sender flat"]:
    """Each sender's clean minus corrupt write, flattened, one row per sender, in the writes' dtype and first device."""
    first = next(iter(clean.values()))
    out = torch.empty(len(clean), first.numel(), dtype=first.dtype, device=first.device)
    for row, name in enumerate(clean):
        out[row] = (clean[name] - corrupt[name].to(clean[name].device)).flatten().to(out.device)
    return out


def _add_scores(scores: Tensor, deltas: Tensor, grads: Iterator[tuple[str, Tensor | None]], column: dict[str, int],
                *, weight: float) -> None:
    """Add ``weight * deltas @ grad`` to each receiver's column, :data:`SCORE_CHUNK` receivers and senders at a time."""

    def flush(chunk: list[tuple[str, Tensor]]) -> None:
        cols = [column[name] for name, _ in chunk]
        stacked = torch.stack([grad.float().flatten().to(deltas.device) for _, grad in chunk])  # receiver flat
        for start in range(0, len(deltas), SCORE_CHUNK):
            part = deltas[start:start + SCORE_CHUNK].float() @ stacked.T
            scores[start:start + SCORE_CHUNK, cols] += weight * part.double().cpu()

    chunk: list[tuple[str, Tensor]] = []
    for name, grad in grads:
        if grad is not None:  # the metric does not read this receiver: its edges score 0
            chunk.append((name, grad))
        if len(chunk) == SCORE_CHUNK:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)


def _head_reading(model: Any, receiver: str, add: Tensor) -> contextlib.AbstractContextManager:
    """One head's query, key or value projection reads ``attn_norm(x + add)``; the other heads ``attn_norm(x)``."""
    layer, part, head = _head_receiver(receiver)
    norm = model.block_module(Tower.TEXT, layer, "attn_norm")
    projection = _projection(model, layer, part)
    seen: dict[str, Tensor] = {}

    def read(module: torch.nn.Module, args: tuple) -> None:
        seen["x"] = args[0]

    def write(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = seen["x"]
        patched = projection.forward(norm.forward(x + add.to(x.device, x.dtype)))  # .forward: no hooks run again
        rows = _head_rows(model, part, head, output.shape[-1])
        return torch.cat([output[..., :rows.start], patched[..., rows], output[..., rows.stop:]], dim=-1)

    return _hooked([norm.register_forward_pre_hook(read), projection.register_forward_hook(write)])


@no_type_check
def patch_edge(model: Any, clean: Batch, corrupt: Batch, metric: Any, edge: tuple[str, str], *,
               scale: float = 1.0) -> float:
    """The metric after patching one edge exactly: ``receiver`` reads ``sender``'s clean write.

    The receiver's input becomes its corrupt input plus ``scale * (clean - corrupt write)``
    of the sender; every other component reads the corrupt run (and the receiver's own
    downstream effects follow). A per-head receiver (``L{l}H{h}Q``, ``L{l}KV{g}K``,
    ``L{l}KV{g}V``) changes only that head's query, key or value. Returns the metric's value.
    """
    _check_layouts(clean, corrupt)
    sender, receiver = edge
    if receiver not in set(_receivers(model, "blocks")) | set(_receivers(model, "heads")):
        raise InputError(f"unknown receiver {receiver!r}; receivers: L{{l}}ATTN, L{{l}}H{{h}}Q, L{{l}}KV{{g}}K, "
                         f"L{{l}}KV{{g}}V, L{{l}}MLP, LOGITS (heads 0..{model.n_heads - 1}, key-value heads "
                         f"0..{model.n_kv_heads - 1})")
    clean_writes, *_ = _writes(model, clean)
    if sender not in clean_writes:
        raise InputError(f"unknown sender {sender!r}; senders: embed, L{{l}}H{{h}}, L{{l}}MLP")
    if not bool(_exists([sender], [receiver])[0, 0]):
        raise InputError(f"{sender} does not write before {receiver} reads; no such edge")
    corrupt_writes, *_ = _writes(model, corrupt)
    delta = scale * (clean_writes[sender] - corrupt_writes[sender])
    reading = (_head_reading(model, receiver, delta) if _head_receiver(receiver) is not None
               else _reading({receiver: _reader(model, receiver)}, {}, add={receiver: delta}))
    with torch.no_grad(), reading:
        logits = model.hf_model(**corrupt.inputs).logits
    return _scalar(metric(logits, corrupt))
