"""Answers decoded from one shared prefill: the greedy answer and K sampled answers per question.

Self-consistency needs K sampled answers per question; the VRP asks that the prompt and
image be encoded once and shared by the K samples, not K separate ``generate`` calls.
:func:`decode_shared` runs one prefill forward of the batch through the wrapped
transformers model, repeats its KV cache ``1 + K`` times per question and decodes a few
tokens with single-token forwards: row 0 of each question greedy, rows 1..K sampled with
temperature and nucleus (top-p) sampling. Decoding stops once every row has produced an
end-of-sequence or pad token (as ``generate`` does), since later tokens are trimmed anyway.

Sampling noise is drawn per question from a generator seeded by ``(seed, question key)``,
so a question's samples do not depend on which batch it was in.

Examples:
    >>> from vlmlens.testing import tiny_vlm, tiny_images
    >>> model = tiny_vlm("llava")
    >>> batch = model.prepare(tiny_images(2), ["Is there a cat?", "Is there a dog?"], suffix=True)
    >>> out = decode_shared(model, batch, k=3, max_new_tokens=2, keys=[1, 2])
    >>> len(out.greedy), len(out.samples[0])
    (2, 3)
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlmlens.errors import DataError

__all__ = ["ROPE_OFFSETS", "SharedDecode", "decode_shared", "sample_top_p"]

ROPE_OFFSETS: dict[str, str] = {"qwen2_vl": "model.rope_deltas"}
"""Family -> attribute path (from ``hf_model``) of the per-sample position offsets that a
prefill stores for multimodal RoPE (Qwen2-VL's M-RoPE computes its own prefill positions).
Other families get ``generate``'s positions: the count of real (unpadded) tokens before
each token, offset 0."""


@dataclass(frozen=True, kw_only=True, eq=False)
class SharedDecode:
    """Greedy and sampled continuations of one batch, decoded from one prefill.

    Attributes:
        greedy: The greedy answer text per question.
        greedy_logprobs: Log-probabilities of the greedy answer's tokens (up to and
            including the end-of-sequence token, if generated), one array per question.
        samples: The K sampled answer texts per question.
    """

    greedy: tuple[str, ...]
    greedy_logprobs: tuple[np.ndarray, ...]
    samples: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not len(self.greedy) == len(self.greedy_logprobs) == len(self.samples):
            raise DataError(
                f"SharedDecode needs one greedy answer, log-prob array and sample list per question, got "
                f"{len(self.greedy)}, {len(self.greedy_logprobs)}, {len(self.samples)}."
            )


def sample_top_p(
    logits: torch.Tensor, uniform: torch.Tensor, *, temperature: float, top_p: float
) -> torch.Tensor:
    """Draw one token per row by temperature + nucleus sampling, by inverse CDF of ``uniform``.

    Tokens are kept from the most probable down until their cumulative probability reaches
    ``top_p`` (the token crossing it is kept, so at least one always is), as transformers'
    ``TopPLogitsWarper`` does.

    Args:
        logits: ``rows vocab`` next-token logits.
        uniform: ``rows`` numbers in [0, 1), the randomness of each draw.
        temperature: Divides the logits; > 0.
        top_p: Nucleus mass in (0, 1].

    Returns:
        ``rows`` token ids (int64).

    Raises:
        DataError: on a non-positive temperature or ``top_p`` outside (0, 1].

    Examples:
        >>> logits = torch.tensor([[0.0, 10.0, 0.0]])
        >>> sample_top_p(logits, torch.tensor([0.99]), temperature=1.0, top_p=0.9).tolist()
        [1]
    """
    if not temperature > 0:
        raise DataError(f"temperature must be > 0, got {temperature}; use the greedy row for T=0.")
    if not 0 < top_p <= 1:
        raise DataError(f"top_p must be in (0, 1], got {top_p}.")
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_probs, order = _most_probable(probs, top_p)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more probable tokens
    kept = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    cdf = kept.cumsum(-1)
    target = uniform.double().to(cdf.device)[:, None] * cdf[:, -1:]
    index = (cdf <= target).sum(-1).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, index[:, None]).squeeze(-1)


NUCLEUS_CANDIDATES = 64
"""Tokens :func:`sample_top_p` first looks at per row: when they hold ``top_p`` of every
row's mass (a trained model's next-token distribution usually does), the nucleus lies among
them and the full-vocabulary sort is skipped."""

CPU_SORT_BELOW = 2048
"""On the CPU, vocabularies up to this size are sorted outright: NumPy sorts such rows about
as fast as ``torch.topk`` selects the candidates from them (80 rows of 1,356 tokens: 2.5 vs
2.3 ms; of 204 tokens: 0.14 vs 0.74 ms)."""


def _most_probable(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's probabilities in descending order with their token ids, at least down to
    the token whose cumulative mass reaches ``top_p``: the top :data:`NUCLEUS_CANDIDATES`
    when they suffice for every row, else the whole vocabulary (sorted by NumPy on the CPU,
    where its sort is several times faster than torch's). Tied tokens come in an unspecified
    but deterministic order."""
    cpu = probs.device.type == "cpu"
    if not (cpu and probs.shape[-1] <= CPU_SORT_BELOW):
        candidates = min(NUCLEUS_CANDIDATES, probs.shape[-1])
        top, order = probs.topk(candidates, dim=-1)
        if candidates == probs.shape[-1] or bool((top.cumsum(-1)[:, -1] >= top_p).all()):
            return top, order
    if cpu:
        order = torch.from_numpy(np.argsort(-probs.detach().numpy(), axis=-1))
        return probs.gather(-1, order), order
    return probs.sort(dim=-1, descending=True)


def _offsets(model: Any, rows: int, copies: int) -> torch.Tensor:
    path = ROPE_OFFSETS.get(model.family)
    if path is None:
        return torch.zeros(rows * copies, 1, dtype=torch.long)
    deltas = operator.attrgetter(path)(model.hf_model)
    return deltas.reshape(rows, 1).long().cpu().repeat_interleave(copies, 0)


def _trim(tokens: list[int], stop: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[: i + 1]
    return tokens


def decode_shared(
    model: Any,
    batch: Any,
    *,
    k: int,
    max_new_tokens: int = 3,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    keys: Sequence[int],
) -> SharedDecode:
    """Greedy answer and ``k`` sampled answers per question from one shared prefill.

    Args:
        model: A HookedVLM.
        batch: From ``model.prepare`` (left padding).
        k: Sampled answers per question (>= 1).
        max_new_tokens: Tokens decoded per answer (POPE answers are one or two tokens).
        temperature: Sampling temperature (> 0).
        top_p: Nucleus mass.
        seed: With each question's key, seeds its sampling noise.
        keys: One integer per question (e.g. its ``question_id``).

    Returns:
        A :class:`SharedDecode`.

    Raises:
        DataError: on bad ``k``, ``max_new_tokens``, sampling settings or ``keys``.
    """
    if k < 1 or max_new_tokens < 1:
        raise DataError(f"decode_shared needs k >= 1 and max_new_tokens >= 1, got k={k}, "
                        f"max_new_tokens={max_new_tokens}.")
    size = len(batch)
    if len(keys) != size:
        raise DataError(f"keys has {len(keys)} entries for a batch of {size}; pass one per question.")
    copies = k + 1
    uniform = torch.stack([
        torch.rand(k, max_new_tokens, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key)),
                   dtype=torch.float64)
        for key in keys
    ])  # question sample step
    inputs = batch.inputs
    mask = inputs["attention_mask"]
    hf = model.hf_model
    device = model.device
    stop = {t for t in (model.tokenizer.eos_token_id, model.tokenizer.pad_token_id) if t is not None}
    chosen, logprobs = [], []
    ended = torch.zeros(size * copies, dtype=torch.bool)
    stop_ids = torch.tensor(sorted(stop), dtype=torch.long)
    real = mask.sum(-1, keepdim=True).long().cpu()  # tokens before the first answer token
    prefill: dict[str, torch.Tensor] = {}
    if model.family not in ROPE_OFFSETS:
        prefill["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = hf(**inputs, **prefill, use_cache=True, logits_to_keep=1)  # left padding: the last prompt position
        cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        cache = out[cache_arg]  # transformers renamed past_key_values to cache (5.2x); both run
        cache.batch_repeat_interleave(copies)
        offsets = _offsets(model, size, copies) + real.repeat_interleave(copies, 0)
        logits = out.logits[:, -1].float().repeat_interleave(copies, 0)
        mask = mask.repeat_interleave(copies, 0)
        for step in range(max_new_tokens):
            rows = logits.view(size, copies, -1)
            greedy = rows[:, 0].argmax(-1)
            sampled = sample_top_p(rows[:, 1:].reshape(size * k, -1), uniform[:, :, step].reshape(-1),
                                   temperature=temperature, top_p=top_p).view(size, k).to(greedy.device)
            token = torch.cat([greedy[:, None], sampled], 1).reshape(-1)
            chosen.append(token.cpu())
            logprobs.append(torch.log_softmax(rows[:, 0].double(), -1).gather(-1, greedy[:, None])[:, 0].cpu())
            ended |= torch.isin(chosen[-1], stop_ids)
            if step == max_new_tokens - 1 or bool(ended.all()):  # every row has answered: later tokens are trimmed
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            position = (offsets + step).to(device)
            out = hf(input_ids=token[:, None].to(device), attention_mask=mask, position_ids=position, use_cache=True,
                     **{cache_arg: cache})
            logits = out.logits[:, -1].float()
    tokens = torch.stack(chosen, 1).view(size, copies, -1).tolist()
    greedy_lp = torch.stack(logprobs, 1).numpy()
    greedy_texts, greedy_scores, samples = [], [], []
    for b in range(size):
        rows = [_trim(t, stop) for t in tokens[b]]
        texts = model.tokenizer.batch_decode(rows, skip_special_tokens=True)
        greedy_texts.append(texts[0])
        greedy_scores.append(greedy_lp[b, : len(rows[0])])
        samples.append(tuple(texts[1:]))
    return SharedDecode(greedy=tuple(greedy_texts), greedy_logprobs=tuple(greedy_scores), samples=tuple(samples))
