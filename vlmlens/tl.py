"""The TransformerLens-shaped surface of HookedVLM: names, hook functions, cfg and weights.

Researchers who know TransformerLens (TL) can keep their habits on the language model of
a VLM:

* TL hook names are aliases of the text tower: ``blocks.3.hook_resid_post``,
  ``hook_embed``, ``ln_final.hook_normalized`` (see :meth:`vlmlens.sites.Site.parse`), and
  :func:`get_act_name` builds them from TL's short names (``"resid_pre"``, ``"pattern"``,
  ``"pre"``, ``"post"``, ...).
* ``model.run_with_hooks(batch, fwd_hooks=[(name_or_filter, fn)])`` with TL's hook-function
  semantics, ``fn(activation, hook) -> activation | None`` (modify in place and return
  ``None``, or return a new tensor); the hook has ``.name`` and ``.layer()``. Filters see TL
  names for the text tower and full names (``vision.blocks.0.attn.hook_z``) for the others.
  Every hook is a :class:`~vlmlens.ops.interventions.Hook` intervention, so it composes
  with the rest and works in sweeps and generation.
* ``model.cfg`` (:class:`TLConfig`) with TL's field names; ``model.to_tokens``,
  ``to_str_tokens``, ``to_string``; weights in TL's shapes (``W_E``, ``W_U``, ``W_Q``,
  ``W_K``, ``W_V``, ``W_O``, ``W_in``, ``W_gate``, ``W_out``; grouped-query ``W_K``/``W_V``
  repeated per query head, as TL does) and ``tokens_to_residual_directions``.

Unlike TL's ``from_pretrained``, nothing is folded into the weights: the model computes
exactly what the Hugging Face model computes, and the norms' gains live in
:func:`vlmlens.ops.apply_ln_to_stack` and in :meth:`TLSurface.tokens_to_residual_directions`.

Examples:
    >>> from vlmlens.testing import tiny_vlm, tiny_images
    >>> model = tiny_vlm("llava")
    >>> batch = model.prepare(tiny_images(1), ["Is there a cat?"])
    >>> def zero_head_1(z, hook):
    ...     z[:, :, 1] = 0.0          # in place, as in TransformerLens
    >>> logits = model.run_with_hooks(batch, fwd_hooks=[(get_act_name("z", 0), zero_head_1)])
    >>> model.cfg.n_layers, model.W_Q.shape
    (2, torch.Size([2, 4, 64, 16]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.sites import Site, Tower, as_point

__all__ = ["TLConfig", "TLSurface", "get_act_name", "to_transformer_lens"]

# TransformerLens's short names in get_act_name (text tower), as suffixes of its hook names.
_TL_BLOCK_SUFFIX = {
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z", "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k", "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores", "result": "attn.hook_result", "pre": "mlp.hook_pre",
    "post": "mlp.hook_post", "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
}


@no_type_check
def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None, *,
                 tower: Tower | str = Tower.TEXT) -> str:
    """A hook name from a short name, as ``transformer_lens.utils.get_act_name``.

    Text-tower names are TL's (so ``"q"`` is q before the rotary embedding, ``"rot_q"`` after
    it; ``"scale"`` with ``layer_type="ln1"``/``"ln2"``, or no layer for the final norm); other
    towers keep their prefix and vlmlens's short names. The name is checked to be a site.

    Examples:
        >>> get_act_name("resid_pre", 3), get_act_name("pattern", 1), get_act_name("post", 0)
        ('blocks.3.hook_resid_pre', 'blocks.1.attn.hook_pattern', 'blocks.0.mlp.hook_post')
        >>> get_act_name("q", 0), get_act_name("scale", 2, "ln1"), get_act_name("scale")
        ('blocks.0.attn.hook_q', 'blocks.2.ln1.hook_scale', 'ln_final.hook_scale')
        >>> get_act_name("z", 2, tower="vision")
        'vision.blocks.2.attn.hook_z'
    """
    if Tower(tower) is not Tower.TEXT:
        return str(Site(tower, as_point(name), layer))
    if name in ("embed", "hook_embed"):
        full = "hook_embed"
    elif name in ("scale", "normalized"):
        if layer is None:
            full = f"ln_final.hook_{name}"
        elif layer_type in ("ln1", "ln2") and name == "scale":
            full = f"blocks.{layer}.{layer_type}.hook_scale"
        else:
            raise InputError(f"get_act_name({name!r}, {layer!r}, {layer_type!r}): vlmlens has ln1/ln2 hook_scale "
                             "and the final norm's hook_scale / hook_normalized")
    elif name in _TL_BLOCK_SUFFIX:
        if layer is None:
            raise InputError(f"get_act_name({name!r}) needs a layer, e.g. get_act_name({name!r}, 0)")
        full = f"blocks.{layer}.{_TL_BLOCK_SUFFIX[name]}"
    else:
        full = name
    Site.parse(full)  # a clear error for a name that is no site
    return full


@dataclass(frozen=True)
class TLConfig:
    """TransformerLens's config fields for the language model (and the vision tower's size).

    Attributes follow ``transformer_lens.HookedTransformerConfig``; ``n_vision_layers``,
    ``d_vision`` and ``family`` are vlmlens's additions.
    """

    model_name: str
    original_architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    d_vocab_out: int
    n_key_value_heads: int
    n_ctx: int
    act_fn: str
    eps: float
    normalization_type: str
    positional_embedding_type: str
    device: torch.device
    dtype: torch.dtype
    family: str
    n_vision_layers: int
    d_vision: int
    attn_only: bool = False


def _weight(module: torch.nn.Module) -> Tensor:
    from vlmlens.ops.logit_attribution import _in_memory

    return _in_memory(module.weight, f"the weight of {type(module).__name__}")


class TLSurface:
    """TransformerLens-style methods and properties, mixed into :class:`vlmlens.HookedVLM`."""

    # ---------------------------------------------------------------- config
    @property
    def cfg(self) -> TLConfig:
        text = self.text_config
        d_head = getattr(text, "head_dim", None) or text.hidden_size // self.n_heads
        act = getattr(text, "hidden_activation", None) or getattr(text, "hidden_act", "")
        vision = self.vision_config
        return TLConfig(
            model_name=getattr(self.hf_model.config, "_name_or_path", "") or self.family,
            original_architecture=self.adapter.architecture, n_layers=self.n_layers, d_model=self.d_model,
            n_heads=self.n_heads, d_head=d_head, d_mlp=text.intermediate_size,
            d_vocab=self._embedding().weight.shape[0], d_vocab_out=self.unembed.weight.shape[0],  # shapes: offload-safe
            n_key_value_heads=self.n_kv_heads, n_ctx=getattr(text, "max_position_embeddings", 0), act_fn=str(act),
            eps=float(getattr(text, "rms_norm_eps", 0.0)), normalization_type="RMS",
            positional_embedding_type="rotary", device=self.device, dtype=next(self.hf_model.parameters()).dtype,
            family=self.family, n_vision_layers=self.n_vision_layers,
            d_vision=getattr(vision, "hidden_size", None) or getattr(vision, "embed_dim", 0),
        )

    # ---------------------------------------------------------------- tokens
    @no_type_check
    def to_tokens(self, text: str | Sequence[str] | Any, *, prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
        """Token ids of text (no image), ``batch pos``; a ``Batch`` gives its ``input_ids``."""
        if isinstance(text, Batch):
            return text.input_ids
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(f"to_tokens takes a string, a list of strings or a Batch, got {text!r}")
        out = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=prepend_bos)
        return out["input_ids"].to(self.device)

    @no_type_check
    def to_str_tokens(self, tokens: str | Tensor | Sequence[int] | Any, *,
                      prepend_bos: bool = True) -> list[str] | list[list[str]]:
        """Token strings: of a string, of ids (1-d: one list; 2-d: one per row) or of a Batch."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens, prepend_bos=prepend_bos)[0]
        ids = torch.as_tensor(tokens.input_ids if isinstance(tokens, Batch) else tokens)
        if ids.dim() == 2:
            rows = [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
            return rows[0] if len(rows) == 1 and not isinstance(tokens, Batch) else rows
        return self.tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())

    @no_type_check
    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids: 1-d to a string, 2-d to one string per row."""
        ids = torch.as_tensor(tokens)
        if ids.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in ids]
        return self.tokenizer.decode(ids.reshape(-1).tolist())

    # ---------------------------------------------------------------- weights (TL shapes)
    def _embedding(self) -> torch.nn.Module:
        return self.hf_model.get_input_embeddings()

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return _weight(self._embedding())

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return _weight(self.unembed).T

    def _per_head(self, part: str, kv: bool) -> Tensor:
        heads = self.n_kv_heads if kv else self.n_heads
        out = []
        for layer in range(self.n_layers):
            w = _weight(self.block_module(Tower.TEXT, layer, part))  # heads*d_head d_model
            w = w.view(heads, -1, w.shape[-1]).transpose(1, 2)  # head d_model d_head
            out.append(w.repeat_interleave(self.n_heads // heads, 0) if kv else w)
        return torch.stack(out)

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._per_head("q_proj", kv=False)

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        """Key weights, repeated per query head where key-value heads are shared (as TL)."""
        return self._per_head("k_proj", kv=True)

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._per_head("v_proj", kv=True)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        out = []
        for layer in range(self.n_layers):
            w = _weight(self.block_module(Tower.TEXT, layer, "o_proj"))  # d_model head*d_head
            out.append(w.view(w.shape[0], self.n_heads, -1).permute(1, 2, 0))
        return torch.stack(out)

    def _mlp(self, part: str) -> Tensor:
        return torch.stack([_weight(self.block_module(Tower.TEXT, layer, part)) for layer in range(self.n_layers)])

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        """The MLP's input weights (``up_proj`` of a gated MLP, as TL's ``W_in``)."""
        return self._mlp("mlp_up").transpose(1, 2)

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._mlp("mlp_in").transpose(1, 2)

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._mlp("mlp_down").transpose(1, 2)

    @no_type_check
    def tokens_to_residual_directions(self, tokens: Any) -> Float[Tensor, "*tokens d_model"]:
        """What a frozen-norm residual is dotted with to give each token's logit.

        The unembedding row times the final norm's gain (TL's folded ``W_U``), so TL's own
        ``ActivationCache.logit_attrs`` on an exported cache matches vlmlens's.
        """
        from vlmlens.ops.logit_attribution import _rms_parts, token_directions

        gain, _ = _rms_parts(self, self.final_norm)
        return token_directions(self, tokens) * gain

    # ---------------------------------------------------------------- hooks
    @no_type_check
    def hook_matches(self, spec: str | Site | Callable[[str], bool]) -> list[Site]:
        """The sites a TL-style ``fwd_hooks`` entry names: a name, a Site, or a filter on names."""
        if callable(spec) and not isinstance(spec, (str, Site)):
            return [s for s in self.sites() if spec(s.tl_name)]
        return [self.site(spec)]

    @no_type_check
    def run_with_hooks(self, batch: Any, *, fwd_hooks: Sequence[tuple[Any, Callable]] = (),
                       bwd_hooks: Sequence[tuple[Any, Callable]] = (), return_type: str | None = "logits",
                       interventions: Sequence[Any] = ()) -> Tensor | None:
        """One forward with TransformerLens hook functions (and any vlmlens interventions).

        Args:
            batch: from ``model.prepare``.
            fwd_hooks: ``(name_or_filter, fn)`` pairs; ``fn(activation, hook)`` returns a new
                activation or ``None`` (keeping in-place edits). Hooks at one site run in order.
            bwd_hooks: not supported; use ``run_with_cache(..., grad=metric)`` for gradients.
            return_type: ``"logits"`` or ``None``.
            interventions: more edits applied in the same forward.
        """
        from vlmlens.ops.interventions import Hook, run_with_interventions

        if bwd_hooks:
            raise InputError("run_with_hooks does not take bwd_hooks; read gradients with "
                             "model.run_with_cache(batch, grad=metric) (cache.grads)")
        if return_type not in ("logits", None):
            raise InputError(f"return_type must be 'logits' or None, got {return_type!r}")
        hooks = []
        for entry in fwd_hooks:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and callable(entry[1])):
                raise InputError(f"each fwd_hooks entry is (name_or_filter, fn(activation, hook)), got {entry!r}")
            hooks += [Hook(site=site, fn=entry[1]) for site in self.hook_matches(entry[0])]
        logits = run_with_interventions(self, batch, [*interventions, *hooks])
        return logits if return_type == "logits" else None


def to_transformer_lens(cache: Any) -> Any:
    """The text tower of a vlmlens cache as a ``transformer_lens.ActivationCache``.

    Keys are TL names; ``hook_embed`` holds what enters layer 0 (after any embedding
    scaling, as TL's ``embed`` does); the norms' ``hook_scale`` entries (the RMS TL divides
    by) are computed from the cached residuals. TL's ``decompose_resid``,
    ``accumulated_resid`` and ``logit_attrs`` run on it and agree with vlmlens's; TL's
    ``apply_ln_to_stack`` divides by the scale only (TL folds the norm's gain into ``W_U``),
    so it is vlmlens's divided by the gain, and ``logit_attrs`` agree because
    ``tokens_to_residual_directions`` folds the gain in. Needs the residual sites cached.
    """
    from transformer_lens import ActivationCache as TLCache

    from vlmlens.ops.logit_attribution import frozen_norm
    from vlmlens.sites import Point

    model = cache._model("to_transformer_lens")
    text = {site: act for site, act in cache.activations.items() if site.tower is Tower.TEXT}
    out = {site.tl_name: act for site, act in text.items() if site.point is not Point.EMBED}
    first = Site(Tower.TEXT, Point.RESID_PRE, 0)
    if first in text:
        out["hook_embed"] = text[first]
    out["ln_final.hook_scale"] = 1.0 / frozen_norm(model, cache).scale
    for layer in range(model.n_layers):
        for norm, point, mlp_input in (("ln1", Point.RESID_PRE, False), ("ln2", Point.RESID_MID, True)):
            if Site(Tower.TEXT, point, layer) in text:
                out[f"blocks.{layer}.{norm}.hook_scale"] = 1.0 / frozen_norm(model, cache, layer,
                                                                           mlp_input=mlp_input).scale
    return TLCache(out, model)
