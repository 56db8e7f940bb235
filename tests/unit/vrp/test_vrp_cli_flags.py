"""`vlmlens reproduce` on a real checkpoint: dtype/device flags, and suffix and answer length chosen for it."""

from __future__ import annotations

import torch

from vlmlens.cli import build_parser, is_toy, load_model
from vlmlens.vrp.cli import _config


def _args(*argv):
    return build_parser().parse_args(["reproduce", *argv])


def test_toys_keep_the_toy_settings_and_real_checkpoints_get_the_pope_ones():
    toy = _config(_args("--models", "toy-llava", "tiny-qwen2_vl"))
    assert not toy.suffix and toy.consistency.max_new_tokens == 3
    real = _config(_args("--models", "llava-hf/llava-1.5-7b-hf", "--dtype", "bfloat16"))
    assert real.suffix and real.consistency.max_new_tokens == 10
    chosen = _config(_args("--models", "/some/checkpoint", "--no-suffix", "--max-new-tokens", "6"))
    assert not chosen.suffix and chosen.consistency.max_new_tokens == 6
    assert is_toy("toy-paligemma") and is_toy("tiny-llava") and not is_toy("google/paligemma-3b-mix-224")


def test_model_flags_reach_the_loader():
    args = _args("--models", "tiny-llava", "--dtype", "bf16", "--device", "cpu")
    assert (args.dtype, args.device, args.device_map) == ("bf16", "cpu", None)
    model = load_model("tiny-llava", dtype=args.dtype, device=args.device)
    assert next(model.hf_model.parameters()).dtype == torch.bfloat16
