"""Hook points: identity modules placed at every site, so nnsight can read and write them.

Installation adds parameter-free :class:`HookPoint` children to the Hugging Face
modules named by the family adapter and routes activations through them with plain
PyTorch hooks and one registered attention function. Nothing about the model's
arithmetic changes: with no edit every hook returns its input object unchanged, so
outputs are bit-identical to the same model run with eager attention.

Where an edit cannot be expressed as "replace this module's input or output" the
hooks keep it causal by construction:

* ``hook_resid_mid`` is the input of the MLP norm. A replacement ``x'`` of the
  residual ``x`` is carried past the block's own residual add by adding ``x' - x`` to
  the MLP output, so the block returns ``x' + mlp(norm(x'))``.
* ``hook_result`` (each head's write into the residual) is computed only while result
  hooks are switched on; the attention output is then rebuilt as the sum over heads
  (plus bias), so edits to single heads propagate.
* ``hook_q/k/v/pattern`` live inside :func:`attention_forward`, registered with
  transformers' ``AttentionInterface`` under the name ``"vlmlens"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vlmlens.adapters.base import Adapter, TowerSpec
from vlmlens.sites import Point, Site, Tower

__all__ = ["HookPoint", "InstalledHooks", "install", "input_hook", "attention_forward", "ATTN_IMPLEMENTATION"]

ATTN_IMPLEMENTATION = "vlmlens"

_MODULE_NAME: dict[Point, str] = {
    Point.RESID_PRE: "hook_resid_pre",
    Point.RESID_MID: "hook_resid_mid",
    Point.RESID_POST: "hook_resid_post",
    Point.ATTN_OUT: "hook_attn_out",
    Point.MLP_OUT: "hook_mlp_out",
    Point.Q: "hook_q",
    Point.K: "hook_k",
    Point.V: "hook_v",
    Point.Z: "hook_z",
    Point.PATTERN: "hook_pattern",
    Point.RESULT: "hook_result",
    Point.MLP_PRE: "hook_pre",
    Point.MLP_POST: "hook_post",
}


class HookPoint(nn.Module):
    """An identity module marking a site; nnsight reads and replaces its output."""

    def forward(self, x: Any) -> Any:
        return x


@dataclass
class InstalledHooks:
    """What :func:`install` did to a model.

    Attributes:
        paths: dotted path (from the model root) of each site's hook module.
        handles: the PyTorch hook handles, removed by :meth:`remove`.
        result_modules: output projections whose per-head result hooks can be switched on.
    """

    paths: dict[Site, str] = field(default_factory=dict)
    handles: list[RemovableHandle] = field(default_factory=list)
    result_modules: dict[tuple[Tower, int], nn.Module] = field(default_factory=dict)

    def set_result(self, enabled: bool, layers: set[tuple[Tower, int]] | None = None) -> None:
        """Switch per-head result computation on or off (all layers, or the given ones)."""
        for key, module in self.result_modules.items():
            module._vlmlens_result = enabled and (layers is None or key in layers)

    def remove(self) -> None:
        """Remove every PyTorch hook (the HookPoint children stay, inert)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _attach(parent: nn.Module, name: str, parent_path: str, hooks: InstalledHooks, site: Site) -> HookPoint:
    point = HookPoint()
    parent.add_module(name, point)
    hooks.paths[site] = f"{parent_path}.{name}" if parent_path else name
    return point


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _output_hook(point: HookPoint):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        return _replace_first(output, point(_first(output)))

    return hook


def input_hook(fn: Callable[[Any], Any], keys: tuple[str, ...] = ("hidden_states",)):
    """A ``with_kwargs`` pre-hook passing a module's first input through ``fn``.

    The first input is the first positional argument, else the first of ``keys``
    present among the keyword arguments, else the first keyword argument.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        key = next((k for k in keys if k in kwargs), next(iter(kwargs)))
        return args, {**kwargs, key: fn(kwargs[key])}

    return hook


def _kwarg_hook(point: HookPoint, name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if kwargs.get(name) is None:
            return None
        return args, {**kwargs, name: point(kwargs[name])}

    return hook


def _install_tower(model: nn.Module, tower: Tower, spec: TowerSpec, cfg: Any, hooks: InstalledHooks) -> int:
    b = spec.block
    n_heads = getattr(cfg, spec.n_heads)
    layers = _get(model, spec.layers)
    for index, block in enumerate(layers):
        prefix = f"{spec.layers}.{index}"
        attn, mlp = _get(block, b.attn), _get(block, b.mlp)
        o_proj, mlp_norm = _get(attn, b.o_proj), _get(block, b.mlp_norm)
        paths = {
            Point.RESID_PRE: (block, prefix),
            Point.RESID_MID: (block, prefix),
            Point.RESID_POST: (block, prefix),
            Point.ATTN_OUT: (block, prefix),
            Point.MLP_OUT: (block, prefix),
            Point.Q: (attn, f"{prefix}.{b.attn}"),
            Point.K: (attn, f"{prefix}.{b.attn}"),
            Point.V: (attn, f"{prefix}.{b.attn}"),
            Point.PATTERN: (attn, f"{prefix}.{b.attn}"),
            Point.Z: (attn, f"{prefix}.{b.attn}"),
            Point.RESULT: (attn, f"{prefix}.{b.attn}"),
            Point.MLP_PRE: (mlp, f"{prefix}.{b.mlp}"),
            Point.MLP_POST: (mlp, f"{prefix}.{b.mlp}"),
        }
        pt = {
            point: _attach(parent, _MODULE_NAME[point], path, hooks, Site(tower, point, index))
            for point, (parent, path) in paths.items()
        }
        add = hooks.handles.append
        add(block.register_forward_pre_hook(_block_pre_hook(pt[Point.RESID_PRE], block), with_kwargs=True))
        add(block.register_forward_hook(_output_hook(pt[Point.RESID_POST])))
        add(attn.register_forward_hook(_output_hook(pt[Point.ATTN_OUT])))
        add(mlp_norm.register_forward_pre_hook(_mid_hook(pt[Point.RESID_MID], block)))
        add(mlp.register_forward_hook(_mlp_out_hook(pt[Point.MLP_OUT], block)))
        add(_get(mlp, b.mlp_in).register_forward_hook(_output_hook(pt[Point.MLP_PRE])))
        add(_get(mlp, b.mlp_down).register_forward_pre_hook(input_hook(pt[Point.MLP_POST]), with_kwargs=True))
        add(o_proj.register_forward_pre_hook(_z_hook(pt[Point.Z], n_heads)))
        add(o_proj.register_forward_hook(_result_hook(pt[Point.RESULT], n_heads)))
        o_proj._vlmlens_result = False
        hooks.result_modules[(tower, index)] = o_proj
    embed = _get(model, spec.embed)
    point = _attach(embed, "hook_embed", spec.embed, hooks, Site(tower, Point.EMBED))
    if spec.embed_from == "output":
        hooks.handles.append(embed.register_forward_hook(_output_hook(point)))
    else:
        hooks.handles.append(embed.register_forward_pre_hook(_kwarg_hook(point, spec.embed_from), with_kwargs=True))
    if spec.final_norm is not None:
        norm = _get(model, spec.final_norm)
        point = _attach(norm, "hook_normalized", spec.final_norm, hooks, Site(tower, Point.LN_FINAL))
        hooks.handles.append(norm.register_forward_hook(_output_hook(point)))
    return len(layers)


def _block_pre_hook(point: HookPoint, block: nn.Module):
    inner = input_hook(point)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        block.__dict__.pop("_vlmlens_mid_delta", None)
        return inner(module, args, kwargs)

    return hook


def _mid_hook(point: HookPoint, block: nn.Module):
    def hook(module: nn.Module, args: tuple) -> Any:
        x = args[0]
        new = point(x)
        if new is x:
            block.__dict__.pop("_vlmlens_mid_delta", None)
            return None
        # The block adds its own copy of the old residual after the MLP; carry the edit past it.
        block.__dict__["_vlmlens_mid_delta"] = new - x
        return (new, *args[1:])

    return hook


def _mlp_out_hook(point: HookPoint, block: nn.Module):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        out = point(_first(output))
        delta = block.__dict__.pop("_vlmlens_mid_delta", None)
        if delta is not None:
            out = out + delta
        return _replace_first(output, out)

    return hook


def _z_hook(point: HookPoint, n_heads: int):
    def hook(module: nn.Module, args: tuple) -> Any:
        z = args[0]
        heads = z.unflatten(-1, (n_heads, -1))
        new = point(heads)
        if new is heads:
            return None
        return (new.flatten(-2), *args[1:])

    return hook


def _result_hook(point: HookPoint, n_heads: int):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if not getattr(module, "_vlmlens_result", False):
            return None
        z = args[0].unflatten(-1, (n_heads, -1))
        weight = module.weight.unflatten(1, (n_heads, -1))  # d_model head d_head
        result = torch.einsum("...hd,mhd->...hm", z, weight)
        version = result._version
        edited = point(result)
        if edited is result and result._version == version:
            return None  # unedited: keep the fused projection's exact output
        out = edited.sum(-2)
        return out + module.bias if module.bias is not None else out

    return hook


def install(model: nn.Module, adapter: Adapter) -> tuple[InstalledHooks, int, int]:
    """Install hook points on a Hugging Face VLM, as its adapter describes.

    Args:
        model: the ``...ForConditionalGeneration`` model.
        adapter: its family adapter.

    Returns:
        The installation record, the number of text layers and of vision layers.
    """
    _register_attention()
    hooks = InstalledHooks()
    cfg = model.config
    n_text = _install_tower(model, Tower.TEXT, adapter.text, getattr(cfg, adapter.text.config), hooks)
    n_vision = _install_tower(model, Tower.VISION, adapter.vision, getattr(cfg, adapter.vision.config), hooks)
    projector = _get(model, adapter.projector)
    p_in = _attach(projector, "hook_in", adapter.projector, hooks, Site(Tower.PROJECTOR, Point.PROJ_IN))
    p_out = _attach(projector, "hook_out", adapter.projector, hooks, Site(Tower.PROJECTOR, Point.PROJ_OUT))
    hooks.handles.append(projector.register_forward_pre_hook(input_hook(p_in), with_kwargs=True))
    hooks.handles.append(projector.register_forward_hook(_output_hook(p_out)))
    for sub in (getattr(cfg, adapter.text.config), getattr(cfg, adapter.vision.config), cfg):
        sub._attn_implementation = ATTN_IMPLEMENTATION
    return hooks, n_text, n_vision


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with q, k, v and the pattern routed through hook points.

    The arithmetic is transformers' eager attention, step for step, so results match
    ``attn_implementation="eager"`` exactly. q/k/v hooks see ``batch seq head d_head``
    (after rotary embeddings, before key/value heads are repeated for GQA); the
    pattern hook sees ``batch head q_seq k_seq`` after softmax.
    """
    q_hook = getattr(module, "hook_q", None)
    if q_hook is not None:
        query = q_hook(query.transpose(1, 2)).transpose(1, 2)
        key = module.hook_k(key.transpose(1, 2)).transpose(1, 2)
        value = module.hook_v(value.transpose(1, 2)).transpose(1, 2)
    groups = getattr(module, "num_key_value_groups", 1)
    key_states = _repeat_kv(key, groups)
    value_states = _repeat_kv(value, groups)
    weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    if q_hook is not None:
        weights = module.hook_pattern(weights)
    output = torch.matmul(weights, value_states)
    return output.transpose(1, 2).contiguous(), weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    if ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    if ATTN_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)
