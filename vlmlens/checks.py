"""The load-time check: every site fires, with the right shape, and computes what its name says.

Firing is not enough: an adapter that points ``mlp_norm`` at the wrong norm still fires
every hook, yet ``hook_resid_mid`` would then not be the residual stream. So the check
also verifies, on one dummy forward, the identities that define the sites:

* ``resid_mid == resid_pre + attn_out`` and ``resid_post == resid_mid + mlp_out``;
* the per-head results sum (plus the output projection's bias) to the attention output,
  or, where a norm follows the attention (Gemma-2's sandwich norm), to that norm's input;
* ``resid_pre`` of layer l+1 is ``resid_post`` of layer l.

It runs for the first two blocks of both towers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmlens.errors import SiteCheckError
from vlmlens.sites import Point, Site, Tower

__all__ = ["check_sites"]

_RTOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = _RTOL) -> bool:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    return a.shape == b.shape and float((a - b).abs().max()) <= rtol * scale


def _rounding(dtype: torch.dtype, terms: int = 1) -> float:
    """The tolerance of an identity recomputed in float32 from ``terms`` values the model rounded to ``dtype``.

    A bf16 (fp16) model rounds every add and every per-head product; float32 models keep
    ``_RTOL``. A mismatched adapter (a missing norm, a scale) is off by O(1), far above this.
    """
    return max(_RTOL, 2.0 * terms**0.5 * torch.finfo(dtype).eps) if dtype.is_floating_point else _RTOL


def check_sites(model: Any) -> None:
    """Run one dummy forward and check sites (see the module docstring).

    Raises:
        SiteCheckError: a site never fired, has a wrong shape, or breaks an identity.
    """
    from PIL import Image

    checked = {(tower, layer) for tower in (Tower.TEXT, Tower.VISION) for layer in (0, 1)}
    seen: dict[Site, Any] = {}
    handles = []
    for site, path in model._hooks.paths.items():
        keep = site.layer is None or (site.tower, site.layer) in checked

        def record(module: nn.Module, args: Any, output: Any, site: Site = site, keep: bool = keep) -> None:
            if site not in seen:
                seen[site] = output.detach().clone() if keep else tuple(output.shape)

        handles.append(model.module(path).register_forward_hook(record))
    size = getattr(model.vision_config, "image_size", 56)
    try:
        batch = model.prepare([Image.new("RGB", (size, size), (128, 128, 128))], ["Is there a cat in the image?"])
        with model.result_hooks():
            model.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [str(s) for s in model.sites() if s not in seen]
    if missing:
        raise SiteCheckError(
            f"{len(missing)} declared site(s) never fired in a dummy forward, so they would capture nothing: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. The adapter for "
            f"{model.adapter.architecture} does not match this model's modules."
        )
    shape = {site: tuple(v.shape) if isinstance(v, torch.Tensor) else v for site, v in seen.items()}
    for site in (Site(Tower.TEXT, Point.RESID_POST, 0), Site(Tower.TEXT, Point.LN_FINAL)):
        if shape[site][-1] != model.d_model:
            raise SiteCheckError(f"{site} has width {shape[site][-1]}, expected d_model={model.d_model}")
    pattern = shape[Site(Tower.TEXT, Point.PATTERN, 0)]
    if pattern[1] != model.n_heads or pattern[2] != pattern[3]:
        raise SiteCheckError(f"text attention pattern has shape {pattern}, expected (batch, {model.n_heads}, seq, seq)")
    for tower, layer in sorted(checked, key=lambda t: (t[0].value, t[1])):
        n = model.n_layers if tower is Tower.TEXT else model.n_vision_layers
        if layer < n:
            _identities(model, seen, tower, layer, n)


@torch.no_grad()
def _identities(model: Any, seen: dict[Site, Any], tower: Tower, layer: int, n_layers: int) -> None:
    def at(point: Point, index: int = layer) -> torch.Tensor:
        return seen[Site(tower, point, index)].float()

    where = f"{tower.value} block {layer} of this {model.adapter.architecture}"
    dtype = seen[Site(tower, Point.RESID_PRE, layer)].dtype
    fix = ("the adapter's block description (vlmlens/adapters/) does not match this model's block; "
           "check attn_norm / mlp_norm / attn_out_norm / mlp_out_norm")
    if not _close(at(Point.RESID_PRE) + at(Point.ATTN_OUT), at(Point.RESID_MID), _rounding(dtype)):
        raise SiteCheckError(f"{where}: hook_resid_mid != hook_resid_pre + hook_attn_out; {fix}")
    if not _close(at(Point.RESID_MID) + at(Point.MLP_OUT), at(Point.RESID_POST), _rounding(dtype)):
        raise SiteCheckError(f"{where}: hook_resid_post != hook_resid_mid + hook_mlp_out; {fix}")
    following = Site(tower, Point.RESID_PRE, layer + 1)
    kept = isinstance(seen.get(following), torch.Tensor)
    if layer + 1 < n_layers and kept and not torch.equal(at(Point.RESID_POST), seen[following].float()):
        raise SiteCheckError(f"{where}: hook_resid_post differs from block {layer + 1}'s hook_resid_pre")
    from vlmlens.hooks import projection_bias

    o_proj = model.block_module(tower, layer, "o_proj")
    heads = at(Point.RESULT).sum(-2)
    bias = projection_bias(o_proj, heads)
    if bias is not None:
        heads = heads + bias.float()
    spec = model.adapter.text if tower is Tower.TEXT else model.adapter.vision
    if spec.block.attn_out_norm is not None:
        norm = model.block_module(tower, layer, "attn_out_norm")
        heads = norm(heads.to(next(norm.parameters()).dtype)).float()
    if not _close(heads, at(Point.ATTN_OUT), _rounding(dtype, at(Point.RESULT).shape[-2])):
        raise SiteCheckError(f"{where}: the per-head hook_result do not sum to the attention output; {fix}")
