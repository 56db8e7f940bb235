"""vlmlens's attention function: the model's own kernel unless a pattern is needed.

A wrapped model keeps the attention implementation it was loaded with (transformers'
default is SDPA; ``"eager"`` is also supported) under a vlmlens name
(``"vlmlens_sdpa"``/``"vlmlens_eager"``) whose function routes q, k and v through their
hook points and then:

* runs the loaded kernel (transformers' own SDPA function, same arguments) when nobody
  needs this layer's attention pattern, so an unedited forward is bit-identical to the
  plain model's;
* runs eager attention, step for step as transformers writes it, with the pattern routed
  through ``hook_pattern``, when the running call requests that layer's pattern (caching
  or editing it, ``BlockAttention``, ``model.patterns()``) or a hook sits on it.

With an SDPA base the mask is SDPA's (boolean, or ``None`` where SDPA uses its causal
kernel); the eager path turns it into the additive mask transformers' eager attention
would have used, so a layer computed eagerly equals the same layer of an eager model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["attention_forward", "implementation_name", "register", "KV_HOOKED", "BASES"]

BASES = ("eager", "sdpa")
"""Attention implementations a wrapped model can keep as its kernel."""

KV_HOOKED = "vlmlens_kv_hooked"
"""Keyword telling the attention function that k and v already passed their hooks (KV cache)."""


def implementation_name(base: str | None) -> str:
    """The vlmlens implementation name for a loaded one (unknown kernels fall back to eager)."""
    register()
    return f"vlmlens_{base if base in BASES else 'eager'}"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def _eager_mask(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """The additive mask eager attention uses for what SDPA is given (a bool mask or ``None``)."""
    if mask is not None and mask.dtype != torch.bool:
        return mask
    q_len, kv_len = query.shape[2], key.shape[2]
    if mask is None:
        if not (causal and q_len > 1):
            return None  # SDPA attends everywhere
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()[None, None]
    zero = torch.zeros((), device=mask.device, dtype=query.dtype)
    return torch.where(mask, zero, torch.finfo(query.dtype).min)


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    *,
    base: str = "eager",
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with q, k, v (and, where needed, the pattern) routed through hook points.

    q/k/v hooks see ``batch seq head d_head`` (after rotary embeddings, before key/value
    heads are repeated for GQA); where a KV cache is in use, k and v already passed their
    hooks on the way into the cache (see ``vlmlens.hooks``). The pattern hook sees
    ``batch head q_seq k_seq`` after softmax; the scores hook sees it before the softmax (scaled,
    soft-capped for Gemma-2, mask added: masked entries hold the dtype's minimum, not -inf).
    """
    if scaling is None:
        scaling = module.head_dim**-0.5
    pattern = getattr(module, "hook_pattern", None)
    scores = getattr(module, "hook_attn_scores", None)
    if pattern is not None:
        if not kwargs.get(KV_HOOKED):
            key = module.hook_k.fire(key.transpose(1, 2)).transpose(1, 2)
            value = module.hook_v.fire(value.transpose(1, 2)).transpose(1, 2)
        query = module.hook_q.fire(query.transpose(1, 2)).transpose(1, 2)
    kwargs.pop(KV_HOOKED, None)
    needed = (pattern is not None and (pattern.requested() or scores.requested())
              or kwargs.get("output_attentions", False))
    if base == "sdpa" and not needed:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        extra = {} if softcap is None else {"softcap": softcap}
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **extra, **kwargs)
    if base == "sdpa":
        causal = kwargs.get("is_causal")
        attention_mask = _eager_mask(attention_mask, query, key,
                                     getattr(module, "is_causal", True) if causal is None else causal)
    groups = getattr(module, "num_key_value_groups", 1)
    key_states = _repeat_kv(key, groups)
    value_states = _repeat_kv(value, groups)
    weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask
    if scores is not None:
        weights = scores.fire(weights)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    if pattern is not None:
        weights = pattern.fire(weights)
    output = torch.matmul(weights, value_states)
    return output.transpose(1, 2).contiguous(), weights


def _for_base(base: str):
    def forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> Any:
        return attention_forward(module, query, key, value, attention_mask, *args, base=base, **kwargs)

    return forward


def register() -> None:
    """Register the attention functions and masks with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        eager_mask,
        sdpa_mask,
    )

    for base, mask in (("eager", eager_mask), ("sdpa", sdpa_mask)):
        name = f"vlmlens_{base}"
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _for_base(base))
        if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)
