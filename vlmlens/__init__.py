"""vlmlens: mechanistic interpretability for vision-language models.

Examples:
    >>> from vlmlens import HookedVLM, Site
    >>> Site.parse("text.blocks.0.hook_resid_post").layer
    0
"""

from vlmlens.data import load_pope, parse_yes_no, pope_metrics, synth_pope
from vlmlens.errors import (
    DataError,
    InputError,
    InterventionError,
    LoadError,
    SiteCheckError,
    SiteNotFoundError,
    UnsupportedArchitectureError,
    VLMLensError,
)
from vlmlens.inputs import Batch
from vlmlens.layout import ImageSpan, TokenLayout
from vlmlens.model import Generation, HookedVLM
from vlmlens.ops import (
    Ablate,
    ActivationCache,
    BlockAttention,
    ImagePatches,
    MaskPixels,
    MaskTokens,
    Patch,
    RoleMean,
    Steer,
    mean_activation,
    run_with_cache,
    run_with_interventions,
    sweep,
    top_patches,
)
from vlmlens.sites import Point, Site, Tower

__all__ = [
    "HookedVLM",
    "Generation",
    "Batch",
    "Site",
    "Point",
    "Tower",
    "TokenLayout",
    "ImageSpan",
    "VLMLensError",
    "SiteNotFoundError",
    "UnsupportedArchitectureError",
    "DataError",
    "InputError",
    "InterventionError",
    "SiteCheckError",
    "run_with_cache",
    "run_with_interventions",
    "sweep",
    "mean_activation",
    "top_patches",
    "ActivationCache",
    "Ablate",
    "Patch",
    "Steer",
    "MaskPixels",
    "MaskTokens",
    "BlockAttention",
    "ImagePatches",
    "RoleMean",
    "LoadError",
    "synth_pope",
    "load_pope",
    "parse_yes_no",
    "pope_metrics",
]
