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
* ``hook_result`` (each head's write into the residual) is computed only for the
  layers the running call requests (:meth:`vlmlens.context.CallStack.requesting`);
  when a head is edited the attention output is rebuilt as the sum over heads (plus
  bias), so edits to single heads propagate.
* ``hook_q/k/v/pattern`` live inside the attention function of :mod:`vlmlens.attention`,
  registered with transformers' ``AttentionInterface``. With a KV cache,
  ``hook_k``/``hook_v`` fire as the new keys and values enter the cache, so an edit made
  at the prompt is what every later decoding step reads. They fire in the order k, v, q.
* A tower without a batch axis (Qwen2-VL's ViT packs all patches of all images into one
  sequence) is shown to hooks with a leading axis of size 1: ``1 patch ...``, and so is
  its projector (the patch merger).
  Its attention runs once per image, so its q/k/v/pattern hooks fire once per image.
* Hooks that replace a module's output run before any hook registered earlier on that
  module (``prepend=True``), so transformers' own output capture (LLaVA reads a vision
  layer's hidden states that way) sees the edited value, whenever it was installed.
* The language model's pre-hook records the :class:`vlmlens.context.Step` of each
  forward (prompt or decoding step); nothing is written onto Hugging Face modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vlmlens import attention
from vlmlens.adapters.base import Adapter, TowerSpec
from vlmlens.context import CallStack, Step
from vlmlens.errors import InputError
from vlmlens.sites import Point, Site, Tower

__all__ = ["HookPoint", "InstalledHooks", "input_hook", "install"]

_GLOBAL_HOOKS = torch.nn.modules.module
"""Where torch keeps the global module hooks (``register_module_forward_hook``)."""

_MODULE_NAME: dict[Point, str] = {
    Point.RESID_PRE: "hook_resid_pre",
    Point.RESID_MID: "hook_resid_mid",
    Point.RESID_POST: "hook_resid_post",
    Point.ATTN_OUT: "hook_attn_out",
    Point.MLP_OUT: "hook_mlp_out",
    Point.LN1_SCALE: "hook_scale",
    Point.LN2_SCALE: "hook_scale",
    Point.Q_PRE_ROPE: "hook_q_pre_rope",
    Point.K_PRE_ROPE: "hook_k_pre_rope",
    Point.Q: "hook_q",
    Point.K: "hook_k",
    Point.V: "hook_v",
    Point.Z: "hook_z",
    Point.ATTN_SCORES: "hook_attn_scores",
    Point.PATTERN: "hook_pattern",
    Point.RESULT: "hook_result",
    Point.MLP_PRE: "hook_pre",
    Point.MLP_POST: "hook_post",
}


class HookPoint(nn.Module):
    """An identity module marking a site; nnsight reads and replaces its output.

    The model's hooks pass activations through :meth:`fire`, which calls the module only
    when something can see or change this point in the running forward: a PyTorch forward
    or backward hook on it (an intervention, a cache, a user's hook), a global module hook,
    or an nnsight trace that reaches it. Otherwise the activation passes untouched without a
    module call, so an unobserved forward pays next to nothing per site.
    """

    def forward(self, x: Any) -> Any:
        return x

    def live(self) -> bool:
        """Whether a call of this module could be seen or edited now."""
        g = _GLOBAL_HOOKS
        if (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks
                or g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks):
            return True
        state = getattr(self.__dict__.get("forward"), "state", None)  # nnsight's instrumented forward
        active = getattr(state, "active", None)
        return active is None or active()[0] is not None  # unknown instrumentation: always call

    def fire(self, x: Any) -> Any:
        """``self(x)`` when :meth:`live`, else ``x`` itself."""
        return self(x) if self.live() else x


class PatternPoint(HookPoint):
    """The hook point of an attention pattern, which knows whether the running call needs it.

    Attributes:
        key: ``(tower, layer)`` of its attention.
        stack: the model's per-call context.
    """

    def __init__(self, key: tuple[Tower, int], stack: CallStack) -> None:
        super().__init__()
        self.key, self.stack = key, stack

    def requested(self) -> bool:
        """Whether some active call reads or writes this pattern (or any hook is on this point)."""
        return bool(self.stack.patterns.get(self.key)) or bool(self._forward_hooks or self._forward_pre_hooks)


@dataclass
class InstalledHooks:
    """What :func:`install` did to a model, and how to undo it.

    Attributes:
        paths: dotted path (from the model root) of each site's hook module.
        handles: the PyTorch hook handles, removed by :meth:`remove`.
        stack: the per-call context (calls, text steps, per-head result requests) the hooks read.
        attn_implementations: each config's attention implementation before installation.
    """

    paths: dict[Site, str] = field(default_factory=dict)
    handles: list[RemovableHandle] = field(default_factory=list)
    stack: CallStack = field(default_factory=CallStack)
    attn_implementations: list[tuple[Any, Any]] = field(default_factory=list)

    def remove(self, model: nn.Module) -> None:
        """Remove every PyTorch hook and HookPoint child and restore the attention setting."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for path in self.paths.values():
            parent, _, name = path.rpartition(".")
            owner = _get(model, parent)
            if name in owner._modules:
                del owner._modules[name]
        self.paths.clear()
        for cfg, value in self.attn_implementations:
            cfg._attn_implementation = value
        self.attn_implementations.clear()


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _attach(parent: nn.Module, name: str, parent_path: str, hooks: InstalledHooks, site: Site) -> HookPoint:
    point = PatternPoint((site.tower, site.layer), hooks.stack) if site.point.pattern_shaped else HookPoint()
    parent.add_module(name, point)
    hooks.paths[site] = f"{parent_path}.{name}" if parent_path else name
    return point


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    return (value, *output[1:]) if isinstance(output, tuple) else value


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
        value = kwargs[name]
        new = point.fire(value)
        return None if new is value else (args, {**kwargs, name: new})

    return hook


def _parent_path(path: str) -> str:
    return path.rpartition(".")[0]


def _install_tower(model: nn.Module, tower: Tower, spec: TowerSpec, cfg: Any, hooks: InstalledHooks) -> int:
    b = spec.block
    n_heads = getattr(cfg, spec.n_heads)
    layers = _get(model, spec.layers)
    packed = not spec.batched
    if tower is Tower.TEXT:  # first, so that every later hook of the language model sees this forward's step
        body = _get(model, _parent_path(spec.layers))
        hooks.handles.append(body.register_forward_pre_hook(_step_enter(hooks.stack), with_kwargs=True))
        hooks.handles.append(body.register_forward_hook(_step_exit(hooks.stack), always_call=True))
    for index, block in enumerate(layers):
        prefix = f"{spec.layers}.{index}"
        attn, mlp = _get(block, b.attn), _get(block, b.mlp)
        o_proj, mlp_norm = _get(attn, b.o_proj), _get(block, b.mlp_norm)
        parents = {point: (attn, f"{prefix}.{b.attn}") for point in (
            Point.Q, Point.K, Point.V, Point.ATTN_SCORES, Point.PATTERN, Point.Z, Point.RESULT)}
        if tower is Tower.TEXT:
            parents |= {point: (attn, f"{prefix}.{b.attn}") for point in (Point.Q_PRE_ROPE, Point.K_PRE_ROPE)}
            parents |= {Point.LN1_SCALE: (_get(block, b.attn_norm), f"{prefix}.{b.attn_norm}"),
                        Point.LN2_SCALE: (mlp_norm, f"{prefix}.{b.mlp_norm}")}
        parents |= {point: (block, prefix) for point in (
            Point.RESID_PRE, Point.RESID_MID, Point.RESID_POST, Point.ATTN_OUT, Point.MLP_OUT)}
        parents |= {point: (mlp, f"{prefix}.{b.mlp}") for point in (Point.MLP_PRE, Point.MLP_POST)}
        pt = {
            point: _attach(parent, _MODULE_NAME[point], path, hooks, Site(tower, point, index))
            for point, (parent, path) in parents.items()
        }
        attn_out = _get(block, b.attn_out_norm) if b.attn_out_norm else attn
        mlp_out = _get(block, b.mlp_out_norm) if b.mlp_out_norm else mlp
        mid: dict[str, torch.Tensor] = {}  # this block's pending resid_mid edit, within one forward
        add = hooks.handles.append
        add(block.register_forward_pre_hook(_block_pre_hook(pt[Point.RESID_PRE], mid, packed), with_kwargs=True))
        add(block.register_forward_hook(_output_hook(pt[Point.RESID_POST], packed), prepend=True))
        add(attn_out.register_forward_hook(_output_hook(pt[Point.ATTN_OUT], packed), prepend=True))
        add(mlp_norm.register_forward_pre_hook(_mid_hook(pt[Point.RESID_MID], mid, packed)))
        add(mlp_out.register_forward_hook(_mlp_out_hook(pt[Point.MLP_OUT], mid, packed), prepend=True))
        add(_get(mlp, b.mlp_in).register_forward_hook(_output_hook(pt[Point.MLP_PRE], packed), prepend=True))
        add(_get(mlp, b.mlp_down).register_forward_pre_hook(input_hook(_packed(pt[Point.MLP_POST], packed)),
                                                            with_kwargs=True))
        add(o_proj.register_forward_pre_hook(_z_hook(pt[Point.Z], n_heads, packed)))
        result = _result_hook(pt[Point.RESULT], n_heads, packed, hooks.stack, (tower, index))
        add(o_proj.register_forward_hook(result, prepend=True))
        if tower is Tower.TEXT:
            add(attn.register_forward_pre_hook(_cache_hook(attn), with_kwargs=True))
            for point, proj in ((Point.Q_PRE_ROPE, b.q_proj), (Point.K_PRE_ROPE, b.k_proj)):
                add(_get(attn, proj).register_forward_hook(_heads_hook(pt[point], attn.head_dim), prepend=True))
            for point, norm in ((Point.LN1_SCALE, _get(block, b.attn_norm)), (Point.LN2_SCALE, mlp_norm)):
                _scale_hooks(pt[point], norm, hooks)
        if packed:  # attention runs once per image: count the images (k is the first hook of each)
            add(attn.register_forward_pre_hook(_image_calls_reset(hooks.stack, index)))
            add(pt[Point.K].register_forward_pre_hook(_image_calls_next(hooks.stack, index)))
    embed = _get(model, spec.embed)
    point = _attach(embed, "hook_embed", spec.embed, hooks, Site(tower, Point.EMBED))
    if spec.embed_from == "output":
        hooks.handles.append(embed.register_forward_hook(_output_hook(point, packed), prepend=True))
    else:
        hooks.handles.append(embed.register_forward_pre_hook(_kwarg_hook(point, spec.embed_from), with_kwargs=True))
    if spec.final_norm is not None:
        norm = _get(model, spec.final_norm)
        point = _attach(norm, "hook_normalized", spec.final_norm, hooks, Site(tower, Point.LN_FINAL))
        hooks.handles.append(norm.register_forward_hook(_output_hook(point, packed), prepend=True))
        if tower is Tower.TEXT:  # after hook_normalized's, prepended: the scale's edit comes first
            scale = _attach(norm, "hook_scale", spec.final_norm, hooks, Site(tower, Point.LN_FINAL_SCALE))
            _scale_hooks(scale, norm, hooks)
    return len(layers)


def _packed(point: HookPoint, packed: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``point`` as a function; for a tower without a batch axis it sees ``1 patch ...``."""
    if not packed:
        return point.fire

    def call(x: torch.Tensor) -> torch.Tensor:
        if not point.live():
            return x
        return point(x[None])[0]  # a view of x when unedited: same values, and gradients reach the hook point

    return call


def _output_hook(point: HookPoint, packed: bool = False):
    fn = _packed(point, packed)

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        first = _first(output)
        new = fn(first)
        return None if new is first else _replace_first(output, new)

    return hook


def _heads_hook(point: HookPoint, head_dim: int):
    """A projection's output ``batch seq (head d_head)`` through ``point`` as ``batch seq head d_head``."""

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not point.live():
            return None
        heads = output.view(*output.shape[:-1], -1, head_dim)
        return point(heads).reshape(output.shape)  # a view when unedited: gradients reach the hook point

    return hook


def _scale_hooks(point: HookPoint, norm: nn.Module, hooks: InstalledHooks) -> None:
    """Route an RMSNorm's scale ``sqrt(mean(x^2) + eps)`` (``batch seq 1``) through ``point``.

    The norm computes its output as it always does; that output is then multiplied by
    ``old scale / new scale``, exactly 1 when the scale is not edited (so the output is
    unchanged bit for bit), and through which the scale's gradient flows when one is asked
    for. An edited scale (e.g. frozen from another run) rescales the output accordingly.
    """
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    seen: dict[str, torch.Tensor] = {}  # this forward's scale, from the pre-hook to the hook

    def pre(module: nn.Module, args: tuple) -> None:
        if not point.live():
            seen.clear()
            return
        # From a detached input: the norm's own graph already carries d scale / d x, so the
        # site's gradient is d metric / d scale with x held fixed (TransformerLens's).
        scale = (args[0].detach().float().pow(2).mean(-1, keepdim=True) + eps).sqrt()
        seen["old"], seen["new"] = scale, point(scale)

    def post(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not seen:
            return output
        old, new = seen.pop("old"), seen.pop("new")
        if new is old and not new.requires_grad:
            return output
        return (output.float() * (old.detach() / new)).to(output.dtype)  # one rounding, in the output's dtype

    hooks.handles.append(norm.register_forward_pre_hook(pre))
    hooks.handles.append(norm.register_forward_hook(post, prepend=True))


def _cache(kwargs: dict) -> tuple[str | None, Any]:
    for key in ("cache", "past_key_values"):
        if kwargs.get(key) is not None:
            return key, kwargs[key]
    return None, None


def _step_enter(stack: CallStack):
    """The language model's pre-hook: push the :class:`Step` this forward covers."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        length = (embeds if embeds is not None else ids).shape[1]
        stack.steps.append(Step.from_cache(_cache(kwargs)[1], length))

    return hook


def _step_exit(stack: CallStack):
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if stack.steps:
            stack.steps.pop()

    return hook


class _HookedCache:
    """A KV cache seen by one attention module: new keys and values pass ``hook_k``/``hook_v``
    before they are stored, so an edit at the prompt persists into every decoding step."""

    def __init__(self, cache: Any, attn: nn.Module) -> None:
        self._cache, self._attn = cache, attn

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        key_states = self._attn.hook_k.fire(key_states.transpose(1, 2)).transpose(1, 2)
        value_states = self._attn.hook_v.fire(value_states.transpose(1, 2)).transpose(1, 2)
        return self._cache.update(key_states, value_states, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)




def _cache_hook(attn: nn.Module):
    """Route a text attention module's KV cache through its k/v hook points for one call."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        key, cache = _cache(kwargs)
        if cache is None:
            return None
        return args, {**kwargs, key: _HookedCache(cache, attn), attention.KV_HOOKED: True}

    return hook


def _image_calls_reset(stack: CallStack, layer: int):
    def hook(module: nn.Module, args: tuple) -> None:
        stack.image_call[layer] = -1

    return hook


def _image_calls_next(stack: CallStack, layer: int):
    def hook(module: nn.Module, args: tuple) -> None:
        stack.image_call[layer] = stack.image_call.get(layer, -1) + 1

    return hook


def _block_pre_hook(point: HookPoint, mid: dict, packed: bool):
    inner = input_hook(_packed(point, packed))

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        mid.clear()
        return inner(module, args, kwargs)

    return hook


def _mid_hook(point: HookPoint, mid: dict, packed: bool):
    fn = _packed(point, packed)

    def hook(module: nn.Module, args: tuple) -> Any:
        x = args[0]
        new = fn(x)
        mid.clear()
        if new is x:
            return None
        # The block adds its own copy of the old residual after the MLP; carry the edit past it.
        mid["delta"] = new - x
        return (new, *args[1:])

    return hook


def _mlp_out_hook(point: HookPoint, mid: dict, packed: bool):
    fn = _packed(point, packed)

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        first = _first(output)
        out = fn(first)
        delta = mid.pop("delta", None)
        if delta is not None:
            out = out + delta
        return None if out is first else _replace_first(output, out)

    return hook


def _z_hook(point: HookPoint, n_heads: int, packed: bool):
    def hook(module: nn.Module, args: tuple) -> Any:
        if not point.live():
            return None
        z = args[0]
        heads = z.unflatten(-1, (n_heads, -1))
        view = heads[None] if packed else heads
        new = point(view)
        # Always pass the hook's output on (a view of z when unedited: same values), so that the
        # site is on the path to the output and its gradient is the real one.
        return ((new[0] if packed else new).flatten(-2), *args[1:])

    return hook


def offloaded(module: nn.Module) -> bool:
    """Whether a module's weights live elsewhere (accelerate's CPU/disk offload) outside its forward."""
    return any(p.device.type == "meta" for p in module.parameters(recurse=False))


def projection_bias(module: nn.Module, like: torch.Tensor) -> torch.Tensor | None:
    """A linear projection's bias, also when offloaded (then read by running it on zeros)."""
    if not offloaded(module):
        return module.bias
    if getattr(module, "bias", None) is None:
        return None
    return module.forward(torch.zeros(1, module.in_features, dtype=like.dtype, device=like.device))[0]


def head_results(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Each head's share of the output projection: ``... head d_head`` -> ``... head d_model`` (no bias).

    An offloaded projection's weight exists only inside its own forward, so it is run once on
    a block-diagonal input (each row one head's z, zeros elsewhere), minus the bias.
    """
    n_heads = z.shape[-2]
    if not offloaded(module):
        return torch.einsum("...hd,mhd->...hm", z, module.weight.unflatten(1, (n_heads, -1)))
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device)
    blocks = (eye[:, :, None] * z[..., None, :, :]).flatten(-2)  # ... head (head d_head)
    out = module.forward(blocks)
    bias = projection_bias(module, z)
    return out if bias is None else out - bias


def _result_hook(point: HookPoint, n_heads: int, packed: bool, stack: CallStack, key: tuple[Tower, int]):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if not stack.results.get(key):
            return None
        z = args[0].unflatten(-1, (n_heads, -1))
        result = head_results(module, z)
        view = result[None] if packed else result
        version = result._version
        edited = point(view)
        if edited is view and result._version == version:
            if not result.requires_grad:
                return None  # unedited: keep the fused projection's exact output
            # Keep the fused output's exact values but let the gradient run through the heads
            # (output = sum of heads + bias), so d metric / d result is the real one, once.
            straight = (result - result.detach()).sum(-2)
            if module.bias is not None and not offloaded(module):
                straight = straight + (module.bias - module.bias.detach())
            return output.detach() + straight
        out = (edited[0] if packed else edited).sum(-2)
        bias = projection_bias(module, out)
        out = out + bias if bias is not None else out
        if edited is view or packed:
            return out  # edited in place: every row is rebuilt from its heads
        # Rows no edit touched (e.g. other conditions of a sweep) keep the fused output exactly.
        changed = (edited != result).flatten(1).any(1)
        return torch.where(changed.view(-1, *[1] * (output.dim() - 1)), out, output)

    return hook


def _installed(model: nn.Module) -> bool:
    return any(isinstance(m, HookPoint) for m in model.modules())


def install(model: nn.Module, adapter: Adapter) -> tuple[InstalledHooks, int, int]:
    """Install hook points on a Hugging Face VLM, as its adapter describes.

    Args:
        model: the ``...ForConditionalGeneration`` model.
        adapter: its family adapter.

    Returns:
        The installation record, the number of text layers and of vision layers.

    Raises:
        InputError: the model already carries vlmlens hook points (it is wrapped by
            another HookedVLM); call ``unwrap()`` on that one first, or reuse it.
    """
    if _installed(model):
        raise InputError(
            f"this {type(model).__name__} is already wrapped by a HookedVLM (it carries vlmlens hook points); "
            "reuse that HookedVLM, or call its unwrap() to restore the plain model before wrapping it again"
        )
    hooks = InstalledHooks()
    cfg = model.config
    text_cfg, vision_cfg = getattr(cfg, adapter.text.config), getattr(cfg, adapter.vision.config)
    n_text = _install_tower(model, Tower.TEXT, adapter.text, text_cfg, hooks)
    n_vision = _install_tower(model, Tower.VISION, adapter.vision, vision_cfg, hooks)
    projector = _get(model, adapter.projector)
    p_in = _attach(projector, "hook_in", adapter.projector, hooks, Site(Tower.PROJECTOR, Point.PROJ_IN))
    p_out = _attach(projector, "hook_out", adapter.projector, hooks, Site(Tower.PROJECTOR, Point.PROJ_OUT))
    packed = not adapter.vision.batched
    hooks.handles.append(projector.register_forward_pre_hook(input_hook(_packed(p_in, packed)), with_kwargs=True))
    hooks.handles.append(projector.register_forward_hook(_output_hook(p_out, packed), prepend=True))
    for sub in (text_cfg, vision_cfg, cfg):
        hooks.attn_implementations.append((sub, sub._attn_implementation))
        sub._attn_implementation = attention.implementation_name(sub._attn_implementation)
    return hooks, n_text, n_vision
