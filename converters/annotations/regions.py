"""Regions: a VIA region checked and repaired into an :class:`Outline`, or dropped with its
:class:`Problem`.

Coordinates are image pixels in the COCO convention of :mod:`converters.annotations.coco` (x right,
y down, origin at the top-left corner of the top-left pixel). Checks, in order: the class value
(through ``class_map``), the shape (polygons; rect / ellipse / circle only with
``shapes_to_polygons``), repeated consecutive vertices (removed), fewer than three distinct
vertices (dropped), vertices outside the image (clipped to ``[0, width] x [0, height]``),
self-intersection (shapely ``make_valid``, the largest part kept; a polygon crossing itself more
than :data:`MAX_CROSSINGS` times is dropped instead, since the repair costs the square of the
crossings: a 101-vertex star takes make_valid 6 s, a 301-vertex one minutes; counting them stops at
the limit), no area (dropped). The problem kinds are listed in
:mod:`converters.annotations.convert`; a problem that loses an annotation (a region or an image
dropped) has severity ``error``, a repair or a remark ``warning``.

Class values: a region's value of the class attribute maps through ``class_map``, whose keys may be
option ids (``lumbar``) or VIA option descriptions (``lumbar vertebra (L1-L5)``, as VIA's COCO
export names categories); the descriptions spinepipe's own VIA projects use are known without being
listed (:data:`converters.annotations.via.DEFAULT_CLASS_OPTIONS`). A value VIA left unset (absent,
``undefined`` in its CSV) is an ``unknown_class`` problem like any other.

The class attribute: when no region carries ``class_attribute`` (annotators may name it
``type``, ``label``, ``vertebra``...), :func:`detect_class_attribute` picks the one attribute
whose values match ``class_map`` for the most regions, or refuses with the attributes found.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.validation import make_valid

from converters.core.errors import InvalidViaError
from converters.annotations.via import DEFAULT_CLASS_OPTIONS, AnnotatedImage, AnnotatedRegion

#: problem kinds that lose an annotation: ``error`` (``spinepipe validate`` exits 1)
ERROR_KINDS = frozenset({"unknown_class", "ignored_shape", "too_few_points", "missing_image",
                         "duplicate_image", "not_adjudicated"})
#: self-crossings repaired in one polygon (an annotator's slip makes one or two)
MAX_CROSSINGS = 100


@dataclass(frozen=True)
class RegionRules:
    """What :func:`validate_region` needs of the ``convert`` params."""

    class_attribute: str = "class"
    class_map: dict[str, str] = field(default_factory=dict)
    implant_classes: list[str] = field(default_factory=list)
    keep_implants: bool = False
    shapes_to_polygons: bool = False
    ellipse_points: int = 32
    #: option description -> option id (VIA's COCO export names categories by description)
    aliases: dict[str, str] = field(default_factory=lambda: {
        d: k for k, d in DEFAULT_CLASS_OPTIONS.items()})

    def class_of(self, value: str) -> str | None:
        """The class of an attribute value: through ``class_map`` directly, or through the
        description of a known option."""
        cls = self.class_map.get(value)
        return cls if cls is not None else self.class_map.get(self.aliases.get(value, ""))


@dataclass
class Problem:
    """One annotation problem, located by VIA file, image and region index."""

    kind: str
    message: str
    file: str = ""
    image: str = ""
    region: int | None = None
    severity: str = ""  # "error" for ERROR_KINDS, else "warning" (set from the kind)

    def __post_init__(self) -> None:
        if not self.severity:
            self.severity = "error" if self.kind in ERROR_KINDS else "warning"

    def line(self) -> str:
        where = ", ".join(x for x in (f"in {self.file}" if self.file else "",
                                      f"image {self.image}" if self.image else "",
                                      f"region {self.region}" if self.region is not None else "")
                          if x)
        return f"{self.severity}: {self.kind}: {self.message}" + (f", {where}" if where else "")


@dataclass
class Outline:
    """A validated polygon: its class, vertices (image pixels, COCO convention), the index of
    the VIA region it came from, and its level (:mod:`converters.spine.levels`)."""

    cls: str
    xs: list[float]
    ys: list[float]
    region: int
    level: str | None = None

    def polygon(self) -> Polygon:
        return Polygon(zip(self.xs, self.ys))



def _shape_to_polygon(r: AnnotatedRegion, n: int) -> tuple[list[float], list[float]] | None:
    p = r.params
    if r.shape == "rect":
        x, y, w, h = p.get("x", 0), p.get("y", 0), p.get("width", 0), p.get("height", 0)
        return [x, x + w, x + w, x], [y, y, y + h, y + h]
    if r.shape in ("ellipse", "circle"):
        cx, cy = p.get("cx", 0), p.get("cy", 0)
        rx = p.get("rx", p.get("r", 0))
        ry = p.get("ry", p.get("r", 0))
        theta = p.get("theta", 0.0)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        x = rx * np.cos(t)
        y = ry * np.sin(t)
        xs = cx + x * np.cos(theta) - y * np.sin(theta)
        ys = cy + x * np.sin(theta) + y * np.cos(theta)
        return xs.tolist(), ys.tolist()
    return None


def validate_region(r: AnnotatedRegion, width: int, height: int, cfg: RegionRules, file: str,
                    image: str) -> tuple[Outline | None, list[Problem]]:
    """Check and repair one region; returns the instance (or None if dropped) and problems."""
    problems: list[Problem] = []

    def problem(kind: str, message: str, severity: str = "") -> None:
        problems.append(Problem(kind, message, file, image, r.index, severity))

    value = r.attributes.get(cfg.class_attribute, "")
    cls = cfg.class_of(value)
    if cls is None:
        problem("unknown_class", f"{cfg.class_attribute}={value!r} is not in convert.class_map")
        return None, problems
    if cls in cfg.implant_classes and not cfg.keep_implants:
        return None, problems  # implants are annotated but not used (as in the study)
    if r.shape in ("polygon", "polyline"):
        xs, ys = list(r.xs), list(r.ys)
    elif r.shape in ("rect", "ellipse", "circle") and cfg.shapes_to_polygons:
        xs, ys = _shape_to_polygon(r, cfg.ellipse_points)
    else:
        hint = " (set convert.shapes_to_polygons)" if r.shape in ("rect", "ellipse", "circle") else ""
        problem("ignored_shape", f"{r.shape} region ignored{hint}")
        return None, problems
    # repeated consecutive vertices (the closing vertex too)
    pts = list(zip(xs, ys))
    dedup = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
    if len(dedup) > 1 and dedup[0] == dedup[-1]:
        dedup.pop()
    if len(dedup) != len(pts):
        problem("repeated_points", f"{len(pts) - len(dedup)} repeated vertex(es) removed")
    if len(set(dedup)) < 3:
        problem("too_few_points", f"{len(set(dedup))} distinct vertex(es); region dropped")
        return None, problems
    arr = np.asarray(dedup, dtype=float)
    clipped = np.clip(arr, [0, 0], [width, height])
    if not np.array_equal(clipped, arr):
        n_out = int((clipped != arr).any(axis=1).sum())
        problem("outside_image", f"{n_out} vertex(es) outside the {width}x{height} image clipped")
        arr = clipped
    poly = Polygon(arr)
    if not poly.is_valid:
        arr = _repair(poly, arr, problem)
        if arr is None:
            return None, problems
    if Polygon(arr).area <= 0:
        problem("too_few_points", "polygon without area; region dropped")
        return None, problems
    return Outline(cls, arr[:, 0].tolist(), arr[:, 1].tolist(), r.index), problems


def _repair(poly: Polygon, arr: np.ndarray, problem) -> np.ndarray | None:
    """The largest part of a self-intersecting polygon made valid, or None (dropped, with an
    error) when nothing with area is left or it crosses itself too often to repair."""
    if count_crossings(arr, MAX_CROSSINGS) > MAX_CROSSINGS:
        problem("self_intersection", f"polygon crossing itself more than {MAX_CROSSINGS} "
                "times: not repaired, region dropped", severity="error")
        return None
    fixed = make_valid(poly)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
    if not parts:
        problem("self_intersection", "self-intersecting polygon with no area; region "
                "dropped", severity="error")
        return None
    best = max(parts, key=lambda g: g.area)
    problem("self_intersection", f"self-intersecting polygon repaired (largest of "
                                 f"{len(parts)} part(s) kept, area {best.area:.0f} of "
                                 f"{sum(g.area for g in parts):.0f})")
    return np.asarray(best.exterior.coords)[:-1]


def count_crossings(arr: np.ndarray, limit: int, chunk: int = 32) -> int:
    """Pairs of non-adjacent edges of the closed ring through the vertices ``arr`` that meet
    (cross or touch), found through an ``STRtree`` of the edges; the count stops once it
    exceeds ``limit``, so the cost stays bounded whatever the polygon."""
    n = len(arr)
    closed = np.vstack([arr, arr[:1]])
    edges = shapely.linestrings(np.stack([closed[:-1], closed[1:]], axis=1))
    tree = shapely.STRtree(edges)
    count = 0
    for start in range(0, n, chunk):
        mine, other = tree.query(edges[start:start + chunk], predicate="intersects")
        mine = mine + start
        later = (other > mine + 1) & ~((mine == 0) & (other == n - 1))  # not adjacent
        count += int(np.count_nonzero(later))
        if count > limit:
            break
    return count


def detect_class_attribute(images: list[AnnotatedImage], rules: RegionRules) -> tuple[str, bool]:
    """The region attribute that holds the class: ``(name, detected)``.

    ``rules.class_attribute`` when any region carries it (or there are no regions); else the
    one attribute whose values map to a class for the most regions (``detected`` True). No
    such attribute, or a tie: :class:`InvalidViaError` listing the attributes found with a few
    of their values, and naming the param to set."""
    regions = [r for img in images for r in img.regions]
    if not regions or any(rules.class_attribute in r.attributes for r in regions):
        return rules.class_attribute, False
    values: dict[str, dict[str, None]] = {}
    hits: dict[str, int] = {}
    for r in regions:
        for name, value in r.attributes.items():
            values.setdefault(name, {})[value] = None
            hits[name] = hits.get(name, 0) + (rules.class_of(value) is not None)
    ranked = sorted(hits.items(), key=lambda kv: -kv[1])
    if ranked and ranked[0][1] > 0 and (len(ranked) == 1 or ranked[1][1] < ranked[0][1]):
        return ranked[0][0], True
    found = "; ".join(
        f"'{name}' ({', '.join(repr(v) for v in list(vals)[:3])}"
        f"{', ...' if len(vals) > 3 else ''})" for name, vals in values.items()) or "none"
    why = "several attributes match equally" if ranked and ranked[0][1] > 0 else \
        "no attribute's values match convert.class_map"
    raise InvalidViaError(f"no region carries the class attribute '{rules.class_attribute}' "
                          f"and {why}; attributes found: {found}; set convert.class_attribute "
                          "(and convert.class_map) in params.yaml",
                          file=images[0].source if images else None)
