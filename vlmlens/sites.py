"""Hook sites: the one place hook names are built and parsed.

A :class:`Site` is a typed value ``(tower, point, layer)`` whose ``str()`` is the
TransformerLens-style name researchers know, prefixed by the tower::

    text.hook_embed                       merged text+image embeddings
    text.blocks.3.hook_resid_post         residual stream after block 3
    text.blocks.3.attn.hook_pattern       post-softmax attention (batch head q_seq k_seq)
    vision.blocks.0.mlp.hook_post         vision MLP neurons
    projector.hook_out                    projected image features

Examples:
    >>> from vlmlens import Site
    >>> site = Site.parse("text.blocks.3.hook_resid_post")
    >>> site.layer, site.short
    (3, 'resid_post')
    >>> str(Site.block("text", "pattern", 1))
    'text.blocks.1.attn.hook_pattern'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from enum import Enum
from typing import no_type_check

from vlmlens.errors import SiteNotFoundError

__all__ = ["BLOCK_POINTS", "HEAD_POINTS", "Point", "Site", "Tower", "as_point", "site_names"]


class Tower(str, Enum):
    """Which part of the VLM a site lives in."""

    TEXT = "text"
    VISION = "vision"
    PROJECTOR = "projector"

    def __str__(self) -> str:
        return self.value


class Point(str, Enum):
    """What a site measures; the value is the name's suffix after the tower/block prefix."""

    EMBED = "hook_embed"
    LN_FINAL = "ln_final.hook_normalized"
    LN_FINAL_SCALE = "ln_final.hook_scale"
    LN1_SCALE = "ln1.hook_scale"
    LN2_SCALE = "ln2.hook_scale"
    PROJ_IN = "hook_in"
    PROJ_OUT = "hook_out"
    RESID_PRE = "hook_resid_pre"
    RESID_MID = "hook_resid_mid"
    RESID_POST = "hook_resid_post"
    ATTN_OUT = "hook_attn_out"
    MLP_OUT = "hook_mlp_out"
    Q_PRE_ROPE = "attn.hook_q_pre_rope"
    K_PRE_ROPE = "attn.hook_k_pre_rope"
    Q = "attn.hook_q"
    K = "attn.hook_k"
    V = "attn.hook_v"
    Z = "attn.hook_z"
    ATTN_SCORES = "attn.hook_attn_scores"
    PATTERN = "attn.hook_pattern"
    RESULT = "attn.hook_result"
    MLP_PRE = "mlp.hook_pre"
    MLP_POST = "mlp.hook_post"

    def __str__(self) -> str:
        return self.value

    @property
    def short(self) -> str:
        """The TransformerLens-style short name (``resid_post``, ``pattern``, ``mlp_post``)."""
        return _SHORT_OF[self]

    @property
    def pattern_shaped(self) -> bool:
        """Whether the activation is ``batch head q_seq k_seq`` (attention scores and pattern)."""
        return self in (Point.ATTN_SCORES, Point.PATTERN)

    @property
    def head_axis(self) -> int | None:
        """The axis of heads: 1 for scores and pattern, 2 for ``batch seq head ...``; ``None``: no heads."""
        if self.pattern_shaped:
            return 1
        return 2 if self in HEAD_POINTS else None


_SHORT_OF: dict[Point, str] = {
    Point.EMBED: "embed",
    Point.LN_FINAL: "ln_final",
    Point.LN_FINAL_SCALE: "ln_final_scale",
    Point.LN1_SCALE: "ln1_scale",
    Point.LN2_SCALE: "ln2_scale",
    Point.PROJ_IN: "proj_in",
    Point.PROJ_OUT: "proj_out",
    Point.RESID_PRE: "resid_pre",
    Point.RESID_MID: "resid_mid",
    Point.RESID_POST: "resid_post",
    Point.ATTN_OUT: "attn_out",
    Point.MLP_OUT: "mlp_out",
    Point.Q: "q",
    Point.Q_PRE_ROPE: "q_pre_rope",
    Point.K_PRE_ROPE: "k_pre_rope",
    Point.K: "k",
    Point.V: "v",
    Point.Z: "z",
    Point.ATTN_SCORES: "attn_scores",
    Point.PATTERN: "pattern",
    Point.RESULT: "result",
    Point.MLP_PRE: "mlp_pre",
    Point.MLP_POST: "mlp_post",
}
_POINT_OF_SHORT: dict[str, Point] = {short: point for point, short in _SHORT_OF.items()}

BLOCK_POINTS: tuple[Point, ...] = (
    Point.RESID_PRE,
    Point.LN1_SCALE,
    Point.Q_PRE_ROPE,
    Point.K_PRE_ROPE,
    Point.K,
    Point.V,
    Point.Q,
    Point.ATTN_SCORES,
    Point.PATTERN,
    Point.Z,
    Point.RESULT,
    Point.ATTN_OUT,
    Point.RESID_MID,
    Point.LN2_SCALE,
    Point.MLP_PRE,
    Point.MLP_POST,
    Point.MLP_OUT,
    Point.RESID_POST,
)
"""Per-layer points, in the order they are computed inside a block (k and v enter the KV cache before q is used)."""

HEAD_POINTS: frozenset[Point] = frozenset({Point.Q_PRE_ROPE, Point.K_PRE_ROPE, Point.Q, Point.K, Point.V, Point.Z,
                                           Point.RESULT})
"""Points with a head axis: ``batch seq head d_head`` (``result``: ``batch seq head d_model``)."""

TEXT_ONLY_POINTS: frozenset[Point] = frozenset({Point.Q_PRE_ROPE, Point.K_PRE_ROPE, Point.LN1_SCALE, Point.LN2_SCALE})
"""Block points of the language model only (rotary embedding; RMSNorm scales)."""

_TOWER_POINTS: dict[Tower, tuple[Point, ...]] = {
    Tower.TEXT: (Point.EMBED, Point.LN_FINAL_SCALE, Point.LN_FINAL),
    Tower.VISION: (Point.EMBED,),
    Tower.PROJECTOR: (Point.PROJ_IN, Point.PROJ_OUT),
}
_PROJECTOR_SUFFIX = {Point.PROJ_IN: "hook_in", Point.PROJ_OUT: "hook_out"}
_BLOCK_RE = re.compile(r"^(text|vision)\.blocks\.(\d+)\.(.+)$")
_TL_TOWER_NAMES = frozenset({"hook_embed", "ln_final.hook_normalized", "ln_final.hook_scale"})
_TL_RENAMED = {"attn.hook_q": "attn.hook_q_pre_rope", "attn.hook_k": "attn.hook_k_pre_rope",
               "attn.hook_rot_q": "attn.hook_q", "attn.hook_rot_k": "attn.hook_k"}
"""TransformerLens's q/k names, which differ from vlmlens's: TL's ``hook_q`` is before the rotary
embedding (vlmlens's ``hook_q_pre_rope``), TL's ``hook_rot_q`` after it (vlmlens's ``hook_q``)."""
_TL_NAME_OF = {vlmlens: tl for tl, vlmlens in _TL_RENAMED.items()}


@dataclass(frozen=True, order=True)
class Site:
    """One hook point of a VLM.

    Args:
        tower: ``text``, ``vision`` or ``projector``.
        point: what is measured (a :class:`Point` or its name or short name).
        layer: block index for per-layer points; ``None`` for tower-level points.

    Raises:
        SiteNotFoundError: the combination does not name a site.
    """

    tower: Tower | str
    point: Point | str
    layer: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tower", _as_tower(self.tower))
        object.__setattr__(self, "point", as_point(self.point))
        if self.point in BLOCK_POINTS:
            if self.tower is Tower.PROJECTOR:
                raise SiteNotFoundError(f"the projector has no blocks; got point {self.point.short!r}")
            if self.point in TEXT_ONLY_POINTS and self.tower is not Tower.TEXT:
                raise SiteNotFoundError(f"{self.point.short} is a language-model point (q/k before the rotary "
                                        f"embedding, RMSNorm scales); the {self.tower.value} tower has no rotary "
                                        "embedding or RMSNorm: use q, k, or the residual sites")
            if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
                raise SiteNotFoundError(
                    f"{self.tower}.blocks.<layer>.{self.point} needs a layer index >= 0, got {self.layer!r}"
                )
        else:
            if self.point not in _TOWER_POINTS[self.tower]:
                valid = ", ".join(p.short for p in _TOWER_POINTS[self.tower])
                raise SiteNotFoundError(
                    f"tower {self.tower.value!r} has no point {self.point.short!r}; "
                    f"its tower-level points are: {valid} (plus the per-block points for text/vision)"
                )
            if self.layer is not None:
                raise SiteNotFoundError(f"{self.tower}.{self.point} is not per-layer; got layer={self.layer!r}")

    @classmethod
    def block(cls, tower: Tower | str, point: Point | str, layer: int) -> Site:
        """A per-layer site, e.g. ``Site.block("text", "resid_post", 3)``."""
        return cls(_as_tower(tower), as_point(point), layer)

    @classmethod
    @no_type_check
    def parse(cls, name: str | Site) -> Site:
        """Parse a full site name strictly.

        Args:
            name: e.g. ``"text.blocks.3.attn.hook_pattern"`` (a ``Site`` is returned as is).
                TransformerLens names (``"blocks.3.attn.hook_pattern"``, ``"hook_embed"``,
                ``"ln_final.hook_normalized"``) name the text tower, with TL's meaning:
                ``blocks.3.attn.hook_q`` is q before the rotary embedding (vlmlens's
                ``text.blocks.3.attn.hook_q_pre_rope``), ``hook_rot_q`` after it.

        Raises:
            SiteNotFoundError: the name is not a site name; the message lists the closest names.
        """
        if isinstance(name, Site):
            return name
        if not isinstance(name, str):
            raise SiteNotFoundError(f"a site name must be a str or Site, got {type(name).__name__}")
        if name.startswith("blocks.") or name in _TL_TOWER_NAMES:  # TransformerLens's names: the text tower
            layer, _, suffix = name.removeprefix("blocks.").partition(".")
            if name.startswith("blocks.") and suffix in _TL_RENAMED:
                name = f"blocks.{layer}.{_TL_RENAMED[suffix]}"
            name = f"{Tower.TEXT.value}.{name}"
        match = _BLOCK_RE.match(name)
        if match:
            tower, layer, suffix = match.groups()
            point = _POINT_BY_VALUE.get(suffix)
            if point is not None and point in BLOCK_POINTS:
                return cls(Tower(tower), point, int(layer))
        else:
            tower, _, suffix = name.partition(".")
            if tower in _TOWER_BY_VALUE:
                t = _TOWER_BY_VALUE[tower]
                for point in _TOWER_POINTS[t]:
                    if suffix == (_PROJECTOR_SUFFIX.get(point) if t is Tower.PROJECTOR else point.value):
                        return cls(t, point)
        raise SiteNotFoundError(_unknown_message(name))

    @property
    def short(self) -> str:
        """The point's short name, e.g. ``resid_post``."""
        return self.point.short

    @property
    def per_head(self) -> bool:
        """Whether the activation has a head axis (q, k, v, z, result; scores and pattern too)."""
        return self.point.head_axis is not None

    def __str__(self) -> str:
        if self.point in BLOCK_POINTS:
            return f"{self.tower.value}.blocks.{self.layer}.{self.point.value}"
        if self.tower is Tower.PROJECTOR:
            return f"projector.{_PROJECTOR_SUFFIX[self.point]}"
        return f"{self.tower.value}.{self.point.value}"

    def __repr__(self) -> str:
        return f"Site({str(self)!r})"

    @property
    def tl_name(self) -> str:
        """The TransformerLens name: the text tower without its ``text.`` prefix (and with TL's q/k
        names: ``hook_q`` before the rotary embedding, ``hook_rot_q`` after), others in full."""
        name = str(self)
        if self.tower is not Tower.TEXT:
            return name
        if self.point.value in _TL_NAME_OF:
            return f"blocks.{self.layer}.{_TL_NAME_OF[self.point.value]}"
        return name.removeprefix(f"{Tower.TEXT.value}.")


_POINT_BY_VALUE = {p.value: p for p in Point}
_TOWER_BY_VALUE = {t.value: t for t in Tower}


def _as_tower(tower: Tower | str) -> Tower:
    if isinstance(tower, Tower):
        return tower
    if tower in _TOWER_BY_VALUE:
        return _TOWER_BY_VALUE[tower]
    raise SiteNotFoundError(f"unknown tower {tower!r}; valid towers: text, vision, projector")


def as_point(point: Point | str) -> Point:
    if isinstance(point, Point):
        return point
    if point in _POINT_OF_SHORT:
        return _POINT_OF_SHORT[point]
    if point in _POINT_BY_VALUE:
        return _POINT_BY_VALUE[point]
    close = difflib.get_close_matches(str(point), list(_POINT_OF_SHORT), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise SiteNotFoundError(
        f"unknown point {point!r}{hint}; valid points: {', '.join(_POINT_OF_SHORT)}"
    )


def site_names(n_text_layers: int, n_vision_layers: int) -> list[Site]:
    """Every site of a model with the given depths, in a stable order.

    Args:
        n_text_layers: number of language-model blocks.
        n_vision_layers: number of vision-tower blocks.
    """
    sites = [Site(Tower.VISION, Point.EMBED)]
    sites += [Site(Tower.VISION, p, layer) for layer in range(n_vision_layers) for p in BLOCK_POINTS
              if p not in TEXT_ONLY_POINTS]
    sites += [Site(Tower.PROJECTOR, Point.PROJ_IN), Site(Tower.PROJECTOR, Point.PROJ_OUT)]
    sites.append(Site(Tower.TEXT, Point.EMBED))
    sites += [Site(Tower.TEXT, p, layer) for layer in range(n_text_layers) for p in BLOCK_POINTS]
    sites += [Site(Tower.TEXT, Point.LN_FINAL_SCALE), Site(Tower.TEXT, Point.LN_FINAL)]
    return sites


def _unknown_message(name: str) -> str:
    # Suggest against a canonical two-layer model: close matches differ only in the layer anyway.
    candidates = [str(s) for s in site_names(2, 2)]
    normalized = re.sub(r"\.blocks\.\d+\.", ".blocks.0.", name)
    close = difflib.get_close_matches(normalized, candidates, n=3, cutoff=0.4)
    layer = re.search(r"\.blocks\.(\d+)\.", name)
    if layer:
        close = [c.replace(".blocks.0.", f".blocks.{layer.group(1)}.") for c in close]
    hint = f" Closest valid sites: {', '.join(close)}." if close else ""
    return f"unknown site {name!r}.{hint} Use model.sites() to list every site of a loaded model."
