"""The SynthPOPE world: object kinds, their shapes, and the scene types they live in.

Everything here is data plus the pure geometry of each shape. An object kind is drawn
inside its bounding box; its shape and texture are functions of the box-normalised
coordinates ``u, v`` in ``(-1, 1)`` (``u`` to the right, ``v`` downwards), so the same
box always gives the same pixels. Colours are RGB in 0..255.

Examples:
    >>> from vlmlens.data.objects import KINDS, article
    >>> KINDS["apple"].shape, article("apple"), article("cup")
    ('disk', 'an', 'a')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from jaxtyping import Bool, Float

from vlmlens.errors import DataError

Shape = Literal["disk", "ring", "rect", "triangle", "diamond", "bowl", "dome", "flower"]
Texture = Literal["solid", "hstripes", "vstripes", "checker", "dots", "outline", "centre", "xlines"]
RGB = tuple[int, int, int]

_Grid = Float[np.ndarray, "h w"]
_Mask = Bool[np.ndarray, "h w"]


@dataclass(frozen=True, kw_only=True)
class ObjectKind:
    """One kind of SynthPOPE object: a name, a shape, a colour and a texture.

    Attributes:
        name: One lowercase word, used verbatim in the POPE question.
        shape: Silhouette drawn inside the bounding box.
        colour: Main RGB colour.
        texture: Pattern painted in ``accent`` on top of ``colour``.
        accent: Second RGB colour, used by the texture (ignored for ``"solid"``).
        aspect: Bounding-box width / height.
    """

    name: str
    shape: Shape
    colour: RGB
    texture: Texture = "solid"
    accent: RGB = (0, 0, 0)
    aspect: float = 1.0

    def __post_init__(self) -> None:
        if not (self.name.isalpha() and self.name.islower()):
            raise DataError(
                f"object name must be one lowercase word, got {self.name!r}; "
                "POPE questions read 'Is there a/an NAME in the image?'"
            )
        if self.shape not in _SHAPES:
            raise DataError(f"unknown shape {self.shape!r} for {self.name!r}; known: {sorted(_SHAPES)}")
        if self.texture not in _TEXTURES:
            raise DataError(
                f"unknown texture {self.texture!r} for {self.name!r}; known: {sorted(_TEXTURES)}"
            )
        if not 0.2 <= self.aspect <= 5.0:
            raise DataError(f"aspect of {self.name!r} must be in [0.2, 5], got {self.aspect}")


@dataclass(frozen=True, kw_only=True)
class SceneType:
    """A kind of place: which objects it usually holds, how often, and its backdrop.

    Attributes:
        name: Scene-type name (``"kitchen"``, ...).
        prior: Relative frequency of this scene type among generated images.
        objects: ``(object name, relative weight)`` pairs drawn inside this scene type.
        background: RGB colour of the backdrop when scene backgrounds are on.
    """

    name: str
    prior: float
    objects: tuple[tuple[str, float], ...]
    background: RGB


def _disk(u: _Grid, v: _Grid) -> _Mask:
    return u * u + v * v <= 1.0


def _ring(u: _Grid, v: _Grid) -> _Mask:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.45**2)


def _rect(u: _Grid, v: _Grid) -> _Mask:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)


def _triangle(u: _Grid, v: _Grid) -> _Mask:
    # Apex at the top edge (v = -1), base on the bottom edge.
    return (np.abs(u) <= (v + 1.0) / 2.0) & (v <= 1.0)


def _diamond(u: _Grid, v: _Grid) -> _Mask:
    return np.abs(u) + np.abs(v) <= 1.0


def _bowl(u: _Grid, v: _Grid) -> _Mask:
    # Lower half of an ellipse whose flat side is the top edge.
    return u * u + ((v + 1.0) / 2.0) ** 2 <= 1.0


def _dome(u: _Grid, v: _Grid) -> _Mask:
    # Upper half of an ellipse whose flat side is the bottom edge.
    return u * u + ((1.0 - v) / 2.0) ** 2 <= 1.0


def _flower(u: _Grid, v: _Grid) -> _Mask:
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    return r <= 0.62 + 0.38 * np.cos(5.0 * theta)


_SHAPES: dict[str, Callable[[_Grid, _Grid], _Mask]] = {
    "disk": _disk,
    "ring": _ring,
    "rect": _rect,
    "triangle": _triangle,
    "diamond": _diamond,
    "bowl": _bowl,
    "dome": _dome,
    "flower": _flower,
}


_TEXTURES = frozenset(("solid", "hstripes", "vstripes", "checker", "dots", "outline", "centre", "xlines"))


def _bands(x: _Grid, n: int) -> _Mask:
    return (np.floor((x + 1.0) * n / 2.0).astype(np.int64) % 2) == 1


def _texture(kind: ObjectKind, u: _Grid, v: _Grid) -> _Mask:
    """Where the accent colour goes (a superset is fine: it is and-ed with the shape)."""
    t = kind.texture
    if t == "hstripes":
        return _bands(v, 5)
    if t == "vstripes":
        return _bands(u, 5)
    if t == "checker":
        return _bands(u, 4) ^ _bands(v, 4)
    if t == "dots":
        fu = ((u + 1.0) * 1.5) % 1.0 - 0.5
        fv = ((v + 1.0) * 1.5) % 1.0 - 0.5
        return fu * fu + fv * fv <= 0.07
    if t == "outline":
        return ~_SHAPES[kind.shape](u / 0.7, v / 0.7)
    if t == "centre":
        return u * u + v * v <= 0.3**2
    if t == "xlines":
        return np.abs(np.abs(u) - np.abs(v)) <= 0.22
    return np.zeros(u.shape, dtype=bool)


def box_coords(x0: int, y0: int, x1: int, y1: int) -> tuple[_Grid, _Grid]:
    """Box-normalised coordinates of the pixel centres inside ``[x0, x1) x [y0, y1)``.

    Args:
        x0: Left pixel column (inclusive).
        y0: Top pixel row (inclusive).
        x1: Right pixel column (exclusive).
        y1: Bottom pixel row (exclusive).

    Returns:
        ``(u, v)``, each of shape ``(y1 - y0, x1 - x0)``, in ``(-1, 1)``.

    Examples:
        >>> u, v = box_coords(0, 0, 4, 2)
        >>> u.shape, float(u[0, 0]), float(v[1, 0])
        ((2, 4), -0.75, 0.5)
    """
    xs = (np.arange(x0, x1, dtype=np.float64) + 0.5 - (x0 + x1) / 2.0) / ((x1 - x0) / 2.0)
    ys = (np.arange(y0, y1, dtype=np.float64) + 0.5 - (y0 + y1) / 2.0) / ((y1 - y0) / 2.0)
    u, v = np.meshgrid(xs, ys)
    return u, v


def shape_mask(name: str, bbox: tuple[int, int, int, int]) -> Bool[np.ndarray, "h w"]:
    """The silhouette of object kind ``name`` inside its box, box-sized.

    Args:
        name: An object kind in :data:`KINDS`.
        bbox: ``(x0, y0, x1, y1)`` in pixels, ends exclusive.

    Returns:
        Boolean mask of shape ``(y1 - y0, x1 - x0)``.

    Raises:
        DataError: If ``name`` is not a known kind.

    Examples:
        >>> bool(shape_mask("laptop", (0, 0, 3, 3)).all())
        True
    """
    kind = get_kind(name)
    u, v = box_coords(*bbox)
    return _SHAPES[kind.shape](u, v)


def accent_mask(name: str, bbox: tuple[int, int, int, int]) -> Bool[np.ndarray, "h w"]:
    """Where object kind ``name`` shows its accent colour inside its box (box-sized)."""
    kind = get_kind(name)
    u, v = box_coords(*bbox)
    return _texture(kind, u, v)


# The vocabulary. Each kind is a distinct (shape, colour, texture) triple; colours
# are chosen to stand out from every scene backdrop below (mean |difference| > 40).
_RED, _BLUE, _ORANGE, _SILVER = (215, 30, 35), (35, 70, 225), (245, 140, 20), (205, 205, 220)
_WHITE, _BLACK, _YELLOW, _GREEN = (245, 245, 240), (20, 20, 25), (245, 215, 25), (20, 105, 35)
_MAGENTA, _BROWN, _PURPLE, _CYAN = (225, 40, 185), (100, 55, 20), (125, 45, 175), (25, 205, 220)
_PINK = (250, 150, 195)

VOCABULARY: tuple[ObjectKind, ...] = (
    # kitchen
    ObjectKind(name="cup", shape="ring", colour=_BLUE),
    ObjectKind(name="bowl", shape="bowl", colour=_CYAN, aspect=2.0),
    ObjectKind(name="apple", shape="disk", colour=_RED),
    ObjectKind(name="knife", shape="rect", colour=_SILVER, aspect=0.3),
    ObjectKind(name="orange", shape="disk", colour=_ORANGE, texture="dots", accent=(170, 80, 0)),
    ObjectKind(name="egg", shape="disk", colour=_WHITE, aspect=0.75),
    # street
    ObjectKind(name="car", shape="rect", colour=_RED, aspect=1.8),
    ObjectKind(name="bus", shape="rect", colour=_YELLOW, texture="vstripes", accent=_BLACK, aspect=2.2),
    ObjectKind(name="sign", shape="diamond", colour=_YELLOW, texture="outline", accent=_BLACK),
    ObjectKind(name="cone", shape="triangle", colour=_ORANGE, texture="hstripes", accent=_WHITE, aspect=0.8),
    ObjectKind(name="umbrella", shape="dome", colour=_PURPLE, texture="vstripes", accent=_PINK, aspect=1.6),
    # park
    ObjectKind(name="tree", shape="triangle", colour=_GREEN, aspect=0.75),
    ObjectKind(name="flower", shape="flower", colour=_MAGENTA, texture="centre", accent=_YELLOW),
    ObjectKind(name="ball", shape="disk", colour=_WHITE, texture="checker", accent=_BLACK),
    ObjectKind(name="dog", shape="disk", colour=_BROWN, aspect=1.6),
    ObjectKind(name="kite", shape="diamond", colour=_PINK, aspect=0.7),
    # office
    ObjectKind(name="book", shape="rect", colour=_BLUE, texture="hstripes", accent=_WHITE, aspect=0.75),
    ObjectKind(name="clock", shape="disk", colour=_WHITE, texture="outline", accent=_BLACK),
    ObjectKind(name="laptop", shape="rect", colour=_BLACK, texture="checker", accent=_SILVER, aspect=1.4),
    ObjectKind(name="phone", shape="rect", colour=_BLACK, aspect=0.55),
    ObjectKind(name="envelope", shape="rect", colour=_WHITE, texture="xlines", accent=_BROWN, aspect=1.5),
)
"""All object kinds, in a fixed order (the order breaks ties in negative sampling)."""

KINDS: dict[str, ObjectKind] = {k.name: k for k in VOCABULARY}
"""Object kinds by name."""

SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType(
        name="kitchen",
        prior=0.35,
        objects=(("cup", 3.0), ("bowl", 2.5), ("apple", 1.5), ("knife", 1.5), ("orange", 1.0), ("egg", 1.0)),
        background=(150, 128, 105),
    ),
    SceneType(
        name="street",
        prior=0.30,
        objects=(("car", 3.0), ("bus", 2.0), ("sign", 2.0), ("cone", 1.0), ("umbrella", 1.0)),
        background=(100, 100, 110),
    ),
    SceneType(
        name="park",
        prior=0.20,
        objects=(("tree", 3.0), ("dog", 2.0), ("ball", 1.5), ("flower", 1.5), ("kite", 1.0)),
        background=(125, 160, 105),
    ),
    SceneType(
        name="office",
        prior=0.15,
        objects=(("book", 2.5), ("laptop", 2.0), ("phone", 2.0), ("clock", 1.0), ("envelope", 1.0)),
        background=(110, 128, 160),
    ),
)
"""Scene types with their object co-occurrence statistics (non-uniform on purpose)."""

SCENES: dict[str, SceneType] = {s.name: s for s in SCENE_TYPES}
"""Scene types by name."""

PLAIN_BACKGROUND: RGB = (128, 128, 128)
"""Backdrop used when scene backgrounds are switched off."""


def get_kind(name: str) -> ObjectKind:
    """Look up an object kind by name.

    Args:
        name: Object name, e.g. ``"cup"``.

    Returns:
        The :class:`ObjectKind`.

    Raises:
        DataError: If the name is unknown; the message lists the known names.

    Examples:
        >>> get_kind("bus").texture
        'vstripes'
    """
    try:
        return KINDS[name]
    except KeyError:
        raise DataError(
            f"unknown SynthPOPE object {name!r}; known objects: {', '.join(KINDS)}"
        ) from None


def get_scene_type(name: str) -> SceneType:
    """Look up a scene type by name; raises DataError listing the known ones."""
    try:
        return SCENES[name]
    except KeyError:
        raise DataError(
            f"unknown SynthPOPE scene type {name!r}; known scene types: {', '.join(SCENES)}"
        ) from None


def article(name: str) -> Literal["a", "an"]:
    """The indefinite article POPE puts before an object name.

    Args:
        name: A lowercase object name.

    Returns:
        ``"an"`` before a vowel letter, else ``"a"``.

    Examples:
        >>> article("umbrella"), article("bus")
        ('an', 'a')
    """
    return "an" if name[:1] in "aeiou" else "a"


def pope_question(name: str) -> str:
    """The exact POPE question for an object name.

    Examples:
        >>> pope_question("egg")
        'Is there an egg in the image?'
    """
    return f"Is there {article(name)} {name} in the image?"


def _check_world() -> None:
    # Import-time consistency check of the tables above: a typo here would otherwise
    # only show up as a strange statistic.
    seen: set[str] = set()
    for scene in SCENE_TYPES:
        for name, weight in scene.objects:
            if name not in KINDS or weight <= 0:
                raise DataError(f"scene type {scene.name!r} lists bad object {name!r} (weight {weight})")
            seen.add(name)
    if len(KINDS) != len(VOCABULARY) or seen != set(KINDS):
        raise DataError("SynthPOPE vocabulary and scene types disagree: every kind must be in one scene type")


_check_world()
