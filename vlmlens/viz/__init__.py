"""vlmlens.viz: plotly figures, and matplotlib drawings over the picture, imported lazily.

Importing :mod:`vlmlens.viz` imports neither plotly nor matplotlib; the first use of a
figure function does. ``patch_overlay`` and ``layout_overlay`` draw with matplotlib.

Examples:
    >>> import vlmlens.viz
    >>> callable(vlmlens.viz.patching_heatmap)
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["fusion_figures", "grid_heatmap", "layout_overlay", "patch_overlay", "patching_heatmap",
           "write_fusion_report"]

# Function names differ from submodule names: importing a submodule sets it as a package attribute.
_LAZY = {"grid_heatmap": "vlmlens.viz.heatmap", "patching_heatmap": "vlmlens.viz.heatmap",
         "patch_overlay": "vlmlens.viz.overlay", "layout_overlay": "vlmlens.viz.overlay",
         "fusion_figures": "vlmlens.viz.circuits", "write_fusion_report": "vlmlens.viz.circuits"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmlens.viz' has no attribute {name!r}; available: {', '.join(__all__)}")


def __dir__() -> list[str]:
    return sorted(__all__)
