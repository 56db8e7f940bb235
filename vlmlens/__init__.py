"""vlmlens: mechanistic interpretability for vision-language models.

Example:
    >>> from vlmlens import HookedVLM, Site
    >>> Site.parse("text.blocks.0.hook_resid_post").layer
    0
"""

from vlmlens.errors import (
    DataError,
    InputError,
    InterventionError,
    SiteCheckError,
    SiteNotFoundError,
    UnsupportedArchitectureError,
    VLMLensError,
)
from vlmlens.inputs import Batch
from vlmlens.layout import ImageSpan, TokenLayout
from vlmlens.model import Generation, HookedVLM
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
]
