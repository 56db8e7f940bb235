"""Position specs, resolved against a TokenLayout into per-sample index tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlmlens.errors import InputError
from vlmlens.layout import TokenLayout

__all__ = ["Positions", "resolve_positions", "seq_axis"]

Positions = str | int | slice | Sequence[int] | torch.Tensor | None
"""``None``/``"all"``, ``"last"`` (last prompt token), ``"image"``, ``"question"``, ``"prefix"``,
an int or list of ints (same positions in every sample), a slice, or a ``batch seq`` bool mask."""


def resolve_positions(positions: Positions, layout: TokenLayout | None, seq_len: int) -> torch.Tensor | None:
    """A ``batch seq`` bool mask of the chosen positions, or ``None`` for all positions.

    Raises:
        InputError: a named kind needs a layout, a position is out of range, or a
            chosen position is padding.
    """
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        mask = positions
    elif isinstance(positions, str):
        if layout is None:
            raise InputError(f"positions={positions!r} needs a TokenLayout; pass a Batch from model.prepare()")
        mask = layout.mask(positions)
    else:
        if layout is None:
            raise InputError("explicit positions need a TokenLayout to check padding; pass a Batch from model.prepare()")
        index = torch.arange(seq_len)[positions] if isinstance(positions, slice) else torch.as_tensor(positions)
        index = index.reshape(-1)
        bad = index[(index < -seq_len) | (index >= seq_len)]
        if bad.numel():
            raise InputError(f"position {int(bad[0])} is out of range for sequence length {seq_len}")
        mask = torch.zeros(layout.batch_size, seq_len, dtype=torch.bool)
        mask[:, index % seq_len] = True
    if layout is not None:
        clash = mask & layout.padding.to(mask.device)
        if clash.any():
            b, p = (int(i) for i in torch.nonzero(clash)[0])
            raise InputError(
                f"position {p} of sample {b} is padding; intervening there would change nothing real. "
                "Choose positions from batch.layout (e.g. 'last', 'image', 'question')."
            )
    return mask


def seq_axis(point_is_pattern: bool) -> int:
    """Axis of token positions in a site's activation (query axis for patterns)."""
    return 2 if point_is_pattern else 1
