"""Sparse autoencoders and transcoders spliced into a site, as interventions.

Anything with ``encode(x) -> features`` and ``decode(features) -> x`` works: a SAELens
``SAE``, or your own module. :class:`Splice` replaces a site's activation with the
dictionary's reconstruction (optionally keeping the error term, so that only the feature
edits change the model), and edits features on the way: ablate some, set or add to
others. With ``output_site`` it is a transcoder: it reads one site and writes the
reconstruction at a later one. :func:`sae_features` returns the feature activations of a
batch (with any interventions active).

Exactness: with ``keep_error=True`` the site becomes ``x + decode(f') - decode(f)``
(``f = encode(x)``, ``f'`` the edited features), so with no feature edit it is ``x``
bit for bit, and a feature edit moves the activation by exactly the decoder's change.

Examples:
    >>> from vlmlens.ops import run_with_interventions
    >>> splice = Splice(site="text.blocks.0.hook_resid_post", sae=sae, ablate=(3, 17), keep_error=True)
    >>> logits = run_with_interventions(model, batch, [splice])
    >>> feats = sae_features(model, batch, "text.blocks.0.hook_resid_post", sae, positions="last")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, no_type_check

import torch

from vlmlens.errors import InterventionError
from vlmlens.ops.frame import EditContext, Frame
from vlmlens.ops.interventions import (
    Edit,
    Intervention,
    _check_site,
    _edit,
    _indices,
    _warn_unused,
)
from vlmlens.ops.positions import Positions
from vlmlens.sites import Site

__all__ = ["Splice", "sae_features"]


def _check_dictionary(sae: Any) -> None:
    if not (callable(getattr(sae, "encode", None)) and callable(getattr(sae, "decode", None))):
        raise InterventionError(f"sae must have encode(x) and decode(features) (e.g. a SAELens SAE), "
                                f"got {type(sae).__name__}")


def _apply_dictionary(sae: Any, x: torch.Tensor, site: Site) -> torch.Tensor:
    """Features of ``x`` in the dictionary's dtype and device, shape ``... n_features``."""
    param = next(iter(sae.parameters()), None) if hasattr(sae, "parameters") else None
    if param is not None:
        x = x.to(param.device, param.dtype)
    try:
        return sae.encode(x)
    except RuntimeError as error:
        raise InterventionError(f"the dictionary could not encode {site}'s activation of shape {tuple(x.shape)} "
                                f"({error}); check the dictionary's width against the site") from error


@no_type_check
@dataclass(frozen=True, kw_only=True)
class Splice(Intervention):
    """Replace a site's activation by a dictionary's reconstruction, editing features.

    Attributes:
        site: where the dictionary reads (and, without ``output_site``, writes).
        sae: anything with ``encode`` and ``decode`` (a SAELens ``SAE``, a transcoder).
        keep_error: add back ``x - decode(encode(x))``, so only feature edits change the
            model (a no-op without them); ``False``: the model runs on the reconstruction.
        ablate: features set to 0.
        set_to: ``{feature: value}`` set after ablation.
        add: ``{feature: value}`` added after that (steering along decoder directions).
        positions: where to splice (default every position; see ``positions=`` elsewhere).
        output_site: a transcoder's output site (must fire after ``site`` in the forward);
            the reconstruction of ``site``'s input replaces it, plus, with ``keep_error``,
            the output's own error ``out - decode(encode(in))``.
    """

    site: Site | str
    sae: Any = field(compare=False)
    keep_error: bool = False
    ablate: tuple[int, ...] | None = None
    set_to: Mapping[int, float] | None = field(default=None, compare=False)
    add: Mapping[int, float] | None = field(default=None, compare=False)
    positions: Positions = None
    output_site: Site | str | None = None

    def __post_init__(self) -> None:
        _check_site(self)
        _check_dictionary(self.sae)
        _indices(self, "ablate")
        for name in ("set_to", "add"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, Mapping) and all(
                    isinstance(k, int) and isinstance(v, (int, float)) for k, v in value.items())):
                raise InterventionError(f"Splice {name} must be a dict {{feature index: number}}, got {value!r}")

    def _edited(self, features: torch.Tensor) -> torch.Tensor:
        n = features.shape[-1]
        chosen = [*(self.ablate or ()), *(self.set_to or {}), *(self.add or {})]
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise InterventionError(f"feature {bad[0]} is out of range for a dictionary of {n} features")
        if not chosen:
            return features
        out = features.clone()
        if self.ablate:
            out[..., list(self.ablate)] = 0
        for i, value in (self.set_to or {}).items():
            out[..., i] = value
        for i, value in (self.add or {}).items():
            out[..., i] += value
        return out

    def _replace(self, source: torch.Tensor, target: torch.Tensor, frame: Frame) -> torch.Tensor:
        """The new value of ``target`` (the written site) from the dictionary applied to ``source``."""
        features = _apply_dictionary(self.sae, source, frame.site)
        edited = self._edited(features)
        if self.keep_error:
            if edited is features:
                return target
            change = self.sae.decode(edited) - self.sae.decode(features)
            new = target + change.to(target.device, target.dtype)
        else:
            new = self.sae.decode(edited).to(target.device, target.dtype)
        if new.shape != target.shape:
            raise InterventionError(f"the dictionary's reconstruction has shape {tuple(new.shape)}, the site "
                                    f"{frame.site} has {tuple(target.shape)}; check the dictionary's width")
        where = frame.positions_mask(self.positions, target.dim())
        return new if where is None else torch.where(where, new, target)

    def compile(self, ctx: EditContext) -> list[tuple[Site, Edit]]:
        model = ctx.model
        site = model.site(self.site)
        _warn_unused(model, site)
        if self.output_site is None:
            return [(site, _edit(site, ctx, lambda act, frame: self._replace(act, act, frame)))]
        out_site = model.site(self.output_site)
        if model.site_order(out_site) <= model.site_order(site):
            raise InterventionError(f"a transcoder's output_site {out_site} must come after its input site {site} "
                                    "in the forward")
        read: dict[str, torch.Tensor] = {}  # this call's input activation, for the output site

        def keep(act: torch.Tensor, frame: Frame) -> torch.Tensor:
            read["x"] = act
            return act

        def write(act: torch.Tensor, frame: Frame) -> torch.Tensor:
            if "x" not in read:
                raise InterventionError(f"the transcoder's input site {site} did not fire before {out_site}")
            return self._replace(read.pop("x"), act, frame)

        return [(site, _edit(site, ctx, keep)), (out_site, _edit(out_site, ctx, write))]


@no_type_check
def sae_features(model: Any, batch: Any, site: Site | str, sae: Any, *, positions: Positions = "all",
                 interventions: Any = ()) -> torch.Tensor:
    """The dictionary's feature activations at a site: ``batch [pos] n_features``.

    Computed from the activation the model used (after ``interventions``), at ``positions``
    (as ``run_with_cache`` selects them), on the dictionary's device.
    """
    from vlmlens.ops.cache import run_with_cache

    _check_dictionary(sae)
    chosen = model.site(site)
    _, cache = run_with_cache(model, batch, sites=[chosen], positions=positions, device=None,
                              interventions=interventions)
    with torch.no_grad():
        return _apply_dictionary(sae, cache[chosen], chosen)
