"""The axis glossary: every tensor shape in vlmlens is written with these names.

=========== ===================================================================
axis        meaning
=========== ===================================================================
batch       samples in a batch (for stacked sweeps: conditions x samples)
seq         token positions of the language model input (text + image tokens)
q_seq       query positions of an attention pattern
k_seq       key positions of an attention pattern
head        attention heads (query heads; key/value sites use kv heads)
d_head      width of one head
d_model     residual-stream width of the language model
d_mlp       number of MLP neurons (the input width of the down projection)
d_vision    residual-stream width of the vision tower
patch       vision-tower token positions (patches, plus a CLS token for CLIP)
layer       stacked layers
vocab       vocabulary entries
=========== ===================================================================
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "Residual",
    "HeadActivation",
    "Pattern",
    "Logits",
    "TokenIds",
    "Mask",
]

Residual = Float[Tensor, "batch seq d_model"]
HeadActivation = Float[Tensor, "batch seq head d_head"]
Pattern = Float[Tensor, "batch head q_seq k_seq"]
Logits = Float[Tensor, "batch seq vocab"]
TokenIds = Int[Tensor, "batch seq"]
Mask = Bool[Tensor, "batch seq"]
