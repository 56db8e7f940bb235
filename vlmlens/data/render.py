"""Paint a :class:`SceneTruth` into an RGB image with numpy (no per-pixel Python).

The backdrop is the scene type's colour with a gentle vertical shading; objects are
painted in order, each inside its box; then Gaussian pixel noise is added. Noise comes
from a generator seeded by ``(seed, crc32(image_id))``, so an image depends only on its
truth and the render settings, never on which other images were made before it.

Examples:
    >>> from vlmlens.data.scene import SceneObject, SceneTruth
    >>> t = SceneTruth(image_id="a.png", size=(16, 16), scene_type="park",
    ...                objects=(SceneObject(name="ball", bbox=(4, 4, 12, 12)),))
    >>> render_scene(t, seed=0).shape
    (16, 16, 3)
"""

from __future__ import annotations

import zlib

import numpy as np
from jaxtyping import Float, UInt8

from vlmlens.data.objects import PLAIN_BACKGROUND, accent_mask, get_kind, get_scene_type, shape_mask
from vlmlens.data.scene import SceneTruth
from vlmlens.errors import DataError

_SHADE = 10.0  # brightness swing of the backdrop shading, top to bottom, in 0..255 units


def background(truth: SceneTruth, *, scene_background: bool = True) -> Float[np.ndarray, "height width 3"]:
    """The noise-free backdrop of an image (float, 0..255).

    Args:
        truth: The scene.
        scene_background: Tint by scene type (``True``) or use plain grey.

    Returns:
        Array of shape ``(height, width, 3)``.
    """
    w, h = truth.size
    base = get_scene_type(truth.scene_type).background if scene_background else PLAIN_BACKGROUND
    shade = np.linspace(_SHADE / 2, -_SHADE / 2, h)[:, None, None]
    return np.broadcast_to(np.asarray(base, dtype=np.float64) + shade, (h, w, 3)).copy()


def render_scene(
    truth: SceneTruth,
    *,
    seed: int,
    noise: float = 0.04,
    contrast: float = 1.0,
    scene_background: bool = True,
) -> UInt8[np.ndarray, "height width 3"]:
    """Render a scene to an RGB uint8 array.

    Args:
        truth: What to draw (objects in paint order).
        seed: Dataset seed; mixed with the image id to seed the pixel noise.
        noise: Standard deviation of the Gaussian pixel noise, as a fraction of 255.
        contrast: Object colours are ``backdrop + contrast * (colour - backdrop)``
            (blended with the backdrop, never with an object underneath); ``1.0`` is
            full colour, smaller values fade objects into the backdrop.
        scene_background: Tint the backdrop by scene type (else plain grey).

    Returns:
        Array of shape ``(height, width, 3)``, dtype uint8.

    Raises:
        DataError: On an unknown object or scene type, or out-of-range settings.
    """
    if noise < 0:
        raise DataError(f"noise must be >= 0, got {noise}")
    if not 0.0 < contrast <= 1.0:
        raise DataError(f"contrast must be in (0, 1], got {contrast}")
    back = background(truth, scene_background=scene_background)
    img = back.copy()
    for obj in truth.objects:
        kind = get_kind(obj.name)
        x0, y0, x1, y1 = obj.bbox
        window = img[y0:y1, x0:x1]
        behind = back[y0:y1, x0:x1]
        shape = shape_mask(obj.name, obj.bbox)
        accent = accent_mask(obj.name, obj.bbox) & shape
        colour = np.where(accent[..., None], np.asarray(kind.accent, float), np.asarray(kind.colour, float))
        painted = behind + contrast * (colour - behind)
        window[shape] = painted[shape]
    if noise > 0:
        rng = np.random.default_rng([seed, zlib.crc32(truth.image_id.encode("utf-8"))])
        img += rng.normal(0.0, noise * 255.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
