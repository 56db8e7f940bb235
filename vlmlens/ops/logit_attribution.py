"""Direct logit attribution (DLA) and the logit lens, with each family's real norms.

The residual stream before the final norm is a sum of parts: the embeddings that enter
layer 0, then every attention and MLP output (:func:`decompose_resid`); an attention
output is itself a sum over heads (:func:`stack_head_results`) and an MLP output a sum
over neurons. DLA asks how much each part pushes a logit (or a logit difference such as
yes - no). The final RMSNorm is not linear, so, as in TransformerLens, it is *frozen* at
the run: every part is divided by the whole residual's RMS at that position (the scale
the model actually used) and multiplied by the norm's gain, ``w`` for Llama and Qwen2,
``1 + w`` for Gemma (:class:`FrozenNorm`). Then the parts add up exactly to the
normalised residual, and their logit attributions add up to the logit (difference).

Gemma-2 (PaliGemma-2) adds a norm on each branch's output before the residual add; a
head's or neuron's part is frozen through that norm the same way, so parts still add up
to the branch output. Gemma-2's final logit soft-capping is not linear and comes after:
attributions add up to the logits *before* the cap.

The logit lens (:func:`logit_lens`) is the other question: what would the model read out
of the residual at layer ``l`` and position ``p`` if it stopped there? It applies the real
final norm to each layer's residual (recomputing its RMS) and unembeds, at any positions,
including image tokens (what does patch ``(r, c)`` "mean" at layer ``l``).

Examples:
    >>> from vlmlens.testing import tiny_vlm, tiny_images
    >>> model = tiny_vlm("llava")
    >>> batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    >>> logits, cache = model.run_with_cache(batch, positions="last")
    >>> parts, labels = cache.decompose_resid(return_labels=True)
    >>> labels[:3]
    ['embed', '0_attn_out', '0_mlp_out']
    >>> attrs = cache.logit_attrs(parts, tokens=5, incorrect_tokens=7)   # component batch
    >>> last = logits[:, -1]
    >>> bool(torch.allclose(attrs.sum(0), last[:, 5] - last[:, 7], atol=1e-4))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlmlens.errors import InputError, SiteNotFoundError
from vlmlens.hooks import projection_bias
from vlmlens.sites import Point, Site, Tower

__all__ = [
    "FrozenNorm",
    "LogitLens",
    "apply_ln_to_stack",
    "decompose_resid",
    "frozen_norm",
    "logit_attrs",
    "logit_lens",
    "neuron_logit_attrs",
    "stack_head_results",
    "token_directions",
]

Tokens = int | str | Sequence[int] | Tensor


@dataclass(frozen=True)
class FrozenNorm:
    """An RMSNorm with its scale frozen at one run: ``x -> x * scale * gain``.

    Attributes:
        scale: ``1 / rms`` of the norm's real input at each (sample, position), as the
            model computed it (float32), shaped like the input with a last axis of 1.
        gain: the elementwise gain (``w``, or ``1 + w`` for Gemma), float32.
    """

    scale: Float[Tensor, "*rows 1"]
    gain: Float[Tensor, " d_model"]

    def __call__(self, stack: Float[Tensor, "*parts d_model"]) -> Float[Tensor, "*parts d_model"]:
        return stack.float() * self.scale.to(stack.device) * self.gain.to(stack.device)


def _cached(cache: Any, site: Site, why: str) -> Tensor:
    if site not in cache.activations:
        raise SiteNotFoundError(
            f"{why} needs {site} in the cache; run run_with_cache with it (or with sites=None, all sites)"
        )
    return cache.activations[site]


def _in_memory(weight: Tensor, what: str) -> Tensor:
    """``weight``, detached; a clear error where accelerate has offloaded it (``meta`` outside its forward)."""
    if weight.device.type == "meta":
        raise InputError(f"{what} is offloaded (device_map with CPU/disk offload), and this analysis reads weights "
                         "directly; load the model without offload (or with the text layers in memory)")
    return weight.detach()


def _rms_parts(model: Any, norm: torch.nn.Module) -> tuple[Tensor, float]:
    """The gain (``w``, or ``1 + w``) and epsilon of an RMSNorm of the text tower."""
    weight = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if weight is None or eps is None or getattr(norm, "bias", None) is not None:
        raise InputError(f"{type(norm).__name__} is not an RMSNorm; DLA freezes RMSNorms only")
    return _in_memory(weight, f"the weight of {type(norm).__name__}").float() + model.adapter.text.rms_offset, float(eps)


def _rms_frozen(model: Any, norm: torch.nn.Module, x: Tensor) -> FrozenNorm:
    """Freeze ``norm`` (an RMSNorm of the text tower) at its real input ``x``."""
    gain, eps = _rms_parts(model, norm)
    scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return FrozenNorm(scale, gain.to(x.device))


def frozen_norm(model: Any, cache: Any, layer: int | None = None, *, mlp_input: bool = False) -> FrozenNorm:
    """The norm the residual meets at ``layer``, frozen at the cached run.

    Args:
        layer: ``None`` (or ``-1``, or ``n_layers``): the final norm, read from
            ``resid_post`` of the last layer; ``l``: the norm before block ``l``'s attention
            (from ``resid_pre``), or before its MLP with ``mlp_input`` (from ``resid_mid``).
    """
    n = model.n_layers
    stop = _stop(model, layer)
    if stop == n:
        site = Site(Tower.TEXT, Point.RESID_POST, n - 1)
        return _rms_frozen(model, model.final_norm, _cached(cache, site, "the final norm's scale"))
    point, part = (Point.RESID_MID, "mlp_norm") if mlp_input else (Point.RESID_PRE, "attn_norm")
    x = _cached(cache, Site(Tower.TEXT, point, stop), f"the scale of block {stop}'s {part}")
    return _rms_frozen(model, model.block_module(Tower.TEXT, stop, part), x)


def apply_ln_to_stack(model: Any, cache: Any, stack: Float[Tensor, "*parts d_model"], layer: int | None = None,
                      *, mlp_input: bool = False) -> Float[Tensor, "*parts d_model"]:
    """Divide every part by the real RMS at its position and apply the norm's gain.

    Unlike TransformerLens (which folds the gain into the weights), the gain is applied
    here, so a full decomposition adds up to ``ln_final.hook_normalized`` and projects onto
    the unembedding rows as they are. ``stack`` ends with the cached activations' axes.
    """
    return frozen_norm(model, cache, layer, mlp_input=mlp_input)(stack)


def _stop(model: Any, layer: int | None) -> int:
    """A TransformerLens-style layer: ``0..n_layers``; ``None`` or ``-1`` mean ``n_layers`` (the final residual)."""
    n = model.n_layers
    if layer is None or layer == -1:
        return n
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
        raise InputError(f"layer {layer!r} is out of range: 0..{n}, or None / -1 for the residual before the "
                         "final norm (as TransformerLens)")
    return layer


@no_type_check
def decompose_resid(model: Any, cache: Any, layer: int | None = None, *, mlp_input: bool = False,
                    mode: str = "all", apply_ln: bool = False, incl_embeds: bool = True,
                    return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
    """The residual stream before ``layer`` as a stack of the parts that wrote it.

    Parts: ``embed`` (what enters layer 0: token and projected image embeddings, after
    any embedding scaling), then ``{l}_attn_out`` and ``{l}_mlp_out`` for every earlier
    block. They add up to ``resid_pre[layer]`` (``resid_mid[layer]`` with ``mlp_input``;
    the final residual for ``layer=None``), up to float rounding.

    Args:
        mode: ``"all"``, ``"attn"`` or ``"mlp"`` (only those outputs).
        apply_ln: freeze the norm met at ``layer`` (see :func:`apply_ln_to_stack`).

    Returns:
        ``part batch [pos] d_model``, and the labels with ``return_labels``.
    """
    if mode not in ("all", "attn", "mlp"):
        raise InputError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
    stop = _stop(model, layer)
    parts, labels = [], []
    if incl_embeds:
        parts.append(_cached(cache, Site(Tower.TEXT, Point.RESID_PRE, 0), "the embed part"))
        labels.append("embed")
    for l in range(stop + (1 if mlp_input and stop < model.n_layers else 0)):
        for point, name in ((Point.ATTN_OUT, "attn_out"), (Point.MLP_OUT, "mlp_out")):
            if mode not in ("all", name[:-4]) or (point is Point.MLP_OUT and l == stop):
                continue
            parts.append(_cached(cache, Site(Tower.TEXT, point, l), "decompose_resid"))
            labels.append(f"{l}_{name}")
    if not parts:
        raise InputError("decompose_resid has no parts to return (incl_embeds=False before layer 0)")
    stack = torch.stack(parts)
    if apply_ln:
        stack = apply_ln_to_stack(model, cache, stack, stop, mlp_input=mlp_input)
    return (stack, labels) if return_labels else stack


def _branch_norm(model: Any, layer: int, part: str, branch_input: Tensor) -> FrozenNorm | None:
    """Gemma-2's norm on a branch output, frozen at that branch's real output; else ``None``."""
    try:
        norm = model.block_module(Tower.TEXT, layer, part)
    except SiteNotFoundError:
        return None
    return _rms_frozen(model, norm, branch_input)


@no_type_check
def stack_head_results(model: Any, cache: Any, layer: int | None = None, *, apply_ln: bool = False,
                       incl_remainder: bool = False,
                       return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
    """Every head's write to the residual, for the blocks before ``layer``: ``L{l}H{h}``.

    Reads ``attn.hook_result`` (cache it; it is computed only when asked for). A head's
    parts add up to ``hook_attn_out`` (plus ``o_proj``'s bias where there is one, which
    ``incl_remainder`` returns as the last part, ``bias``); on Gemma-2 each head is frozen
    through the post-attention norm first.

    Returns:
        ``part batch [pos] d_model`` (parts layer-major), and the labels with ``return_labels``.
    """
    stop = _stop(model, layer)
    parts, labels, remainder = [], [], []
    for l in range(stop):
        result = _cached(cache, Site(Tower.TEXT, Point.RESULT, l), "stack_head_results")  # batch [pos] head d
        heads = result.movedim(-2, 0)
        bias = projection_bias(model.block_module(Tower.TEXT, l, "o_proj"), result)
        bias = (torch.zeros(result.shape[-1]) if bias is None else bias.detach()).to(result.device, result.dtype)
        bias = bias.expand_as(heads[0])
        frozen = _branch_norm(model, l, "attn_out_norm", heads.sum(0) + bias)
        parts.append(heads if frozen is None else frozen(heads).to(heads.dtype))
        remainder.append(bias if frozen is None else frozen(bias).to(heads.dtype))
        labels += [f"L{l}H{h}" for h in range(heads.shape[0])]
    if not parts:
        raise InputError("there are no heads before layer 0")
    stack = torch.cat(parts)
    if incl_remainder:
        rest = torch.stack(remainder).sum(0)
        stack = torch.cat([stack, rest[None]])
        labels.append("bias")
    if apply_ln:
        stack = apply_ln_to_stack(model, cache, stack, stop)
    return (stack, labels) if return_labels else stack


def _token_ids(model: Any, tokens: Tokens) -> Tensor:
    if isinstance(tokens, str):
        ids = model.tokenizer.encode(tokens, add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(f"{tokens!r} is {len(ids)} tokens, not one; pass a token id or a single-token string")
        return torch.tensor(ids[0])
    ids = torch.as_tensor(tokens)
    vocab = model.unembed.weight.shape[0]
    if ids.dtype.is_floating_point or bool(((ids < 0) | (ids >= vocab)).any()):
        raise InputError(f"token ids must be integers in 0..{vocab - 1}, got {tokens!r}")
    return ids


@no_type_check
def token_directions(model: Any, tokens: Tokens, incorrect_tokens: Tokens | None = None) -> Tensor:
    """Unembedding rows of ``tokens`` (minus those of ``incorrect_tokens``): ``[...] d_model``."""
    weight = _in_memory(model.unembed.weight, "the unembedding").float()
    ids = _token_ids(model, tokens)
    direction = weight[ids]
    if incorrect_tokens is not None:
        other = _token_ids(model, incorrect_tokens)
        if other.shape != ids.shape:
            raise InputError("tokens and incorrect_tokens must have the same shape")
        direction = direction - weight[other]
    return direction


def _align(direction: Tensor, rows: tuple[int, ...]) -> Tensor:
    """Broadcast token directions (``d``, ``batch d`` or ``batch pos d``) onto ``rows d``."""
    if direction.dim() == 2 and len(rows) == 2:  # one token per sample, over positions
        return direction[:, None]
    return direction


@no_type_check
def logit_attrs(model: Any, cache: Any, stack: Float[Tensor, "part *rows d_model"], tokens: Tokens,
                incorrect_tokens: Tokens | None = None, *, apply_ln: bool = True) -> Float[Tensor, " part *rows"]:
    """Each part's push on ``tokens``'s logit (minus ``incorrect_tokens``'s).

    With ``apply_ln`` (default, as TransformerLens) the final norm is frozen and applied to
    the stack first; over a full :func:`decompose_resid` the attributions add up to the
    logit (difference) before any soft-cap.
    """
    scaled = apply_ln_to_stack(model, cache, stack) if apply_ln else stack.float()
    direction = _align(token_directions(model, tokens, incorrect_tokens), tuple(stack.shape[1:-1]))
    return (scaled * direction.to(scaled.device)).sum(-1)


@no_type_check
def neuron_logit_attrs(model: Any, cache: Any, layer: int, tokens: Tokens,
                       incorrect_tokens: Tokens | None = None) -> Float[Tensor, "*rows neuron"]:
    """Each MLP neuron of ``layer``'s direct push on the logit (difference), through ``W_down``.

    Reads ``mlp.hook_post`` of ``layer`` and the final residual; the neurons of a layer
    (plus the down projection's bias, if any) add up to :func:`logit_attrs` of its
    ``mlp_out``.
    """
    post = _cached(cache, Site(Tower.TEXT, Point.MLP_POST, layer), "neuron_logit_attrs").float()
    down = model.block_module(Tower.TEXT, layer, "mlp_down")
    w_down = _in_memory(down.weight, "the MLP's down projection").float().to(post.device)  # d_model neuron
    final = frozen_norm(model, cache)
    direction = _align(token_directions(model, tokens, incorrect_tokens), tuple(post.shape[:-1])).to(post.device)
    per_row = direction * final.gain.to(post.device)  # rows d_model (or d_model)
    branch = None
    if model.adapter.text.block.mlp_out_norm is not None:  # Gemma-2: freeze the norm at the MLP's real output
        b_down = None if down.bias is None else _in_memory(down.bias, "the down projection's bias").float()
        out = torch.nn.functional.linear(post, w_down, None if b_down is None else b_down.to(post.device))
        branch = _branch_norm(model, layer, "mlp_out_norm", out)
    if branch is not None:
        per_row = per_row * branch.gain.to(post.device)
    read = per_row @ w_down  # rows neuron
    scale = final.scale.to(post.device) * (branch.scale.to(post.device) if branch is not None else 1.0)
    return post * read * scale


@dataclass(frozen=True)
class LogitLens:
    """What the residual at each layer and chosen position reads out as, through the final norm.

    Attributes:
        logits: ``layer batch pos k``: logits of the chosen tokens, or of the top ``k``.
        token_ids: ``layer batch pos k`` (the chosen tokens repeated, or each cell's top ``k``).
        layers: residual read: ``l`` is ``resid_pre`` of block ``l``, ``n_layers`` the final one.
        positions: ``"position:token"`` labels for sample 0 (image tokens as ``img(r,c)``).
        grid: ``(rows, cols)`` when the positions are exactly one image's patches, else ``None``.
    """

    logits: Float[Tensor, "layer batch pos k"]
    token_ids: Int[Tensor, "layer batch pos k"]
    layers: tuple[int, ...]
    positions: tuple[str, ...]
    grid: tuple[int, int] | None = None

    def tokens(self, model: Any, layer: int, sample: int = 0) -> list[list[str]]:
        """Decoded tokens at ``layer`` (an entry of ``layers``), one list per position."""
        if layer not in self.layers:
            raise InputError(f"layer {layer} is not in this lens; layers: {self.layers}")
        ids = self.token_ids[self.layers.index(layer), sample]
        return [model.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]

    def patch_grid(self, k: int = 0) -> Float[Tensor, "layer batch row col"]:
        """The ``k``-th logit per patch laid out as the image grid (one image's patches only)."""
        if self.grid is None:
            raise InputError("this lens is not over one image's patches; build it with positions='image' "
                             "on single-image prompts")
        return self.logits[..., k].reshape(*self.logits.shape[:2], *self.grid)


@no_type_check
def logit_lens(model: Any, batch: Any, *, positions: Any = "last", tokens: Tokens | None = None,
               top_k: int = 5, layers: Sequence[int] | None = None) -> LogitLens:
    """Unembed the residual stream at each layer, through the real final norm.

    Args:
        batch: from ``model.prepare``.
        positions: any positions spec (``"last"``, ``"image"``, ``"question"``, indices ...).
        tokens: read these tokens' logits (e.g. ``["yes", "no"]`` as ids or strings); else
            each cell's ``top_k``.
        layers: which residuals (``0..n_layers``; default all, ``n_layers`` = the final one).

    Logits are the unembedding's output; Gemma-2's final soft-cap (``tanh(x / cap) * cap``),
    which is monotone, is not applied.
    """
    from vlmlens.ops.patching import _position_labels

    n = model.n_layers
    chosen = list(range(n + 1)) if layers is None else [int(l) for l in layers]
    bad = [l for l in chosen if not 0 <= l <= n]
    if bad:
        raise InputError(f"logit_lens layer {bad[0]} is out of range 0..{n} ({n} = the final residual)")
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    sites = [Site(Tower.TEXT, Point.RESID_PRE, l) if l < n else Site(Tower.TEXT, Point.RESID_POST, n - 1)
             for l in chosen]
    _, cache = model.run_with_cache(batch, sites=sites, positions=positions)
    ids = None if tokens is None else torch.stack([_token_ids(model, t) for t in
                                                    ([tokens] if isinstance(tokens, (int, str)) else tokens)])
    norm, head = model.final_norm, model.unembed
    device, dtype = _placement(model, head)
    all_logits, all_ids = [], []
    with torch.no_grad():
        for site in sites:
            resid = cache.activations[site]
            resid = resid[:, None] if resid.dim() == 2 else resid  # one position: batch d -> batch 1 d
            logits = head(norm(resid.to(device, dtype))).float().cpu()
            if ids is None:
                values, found = logits.topk(top_k, dim=-1)
            else:
                found = ids.expand(*logits.shape[:-1], -1)
                values = logits.gather(-1, found)
            all_logits.append(values)
            all_ids.append(found)
    layout = batch.layout
    first = torch.nonzero(_positions_mask(positions, layout)[0])[:, 0].tolist()
    grids = {spans[0].grid for spans in layout.images if len(spans) == 1}
    single = all(len(spans) == 1 for spans in layout.images) and len(grids) == 1
    grid = grids.pop() if isinstance(positions, str) and positions == "image" and single else None
    return LogitLens(torch.stack(all_logits), torch.stack(all_ids), tuple(chosen),
                     _position_labels(model, batch, first), grid)


def _placement(model: Any, module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where to send a module's input: its weights' device (the model's, if offloaded) and dtype."""
    param = next(module.parameters())
    return (model.device if param.device.type == "meta" else param.device), param.dtype


def _positions_mask(positions: Any, layout: Any) -> Tensor:
    from vlmlens.ops.positions import resolve_positions

    mask = resolve_positions(positions, layout, layout.seq_len)
    return torch.ones(layout.batch_size, layout.seq_len, dtype=torch.bool) if mask is None else mask
