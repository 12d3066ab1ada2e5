"""A model's lumbar outline that covers two or more vertebral bodies (a fused blob: a semantic
model's connected component across a disc it did not see) cut into one outline per body before
the levels are assigned, so that the clinical measures (:mod:`converters.spine.measures`) are made
from what the model did see instead of withholding every level above the blob.

Input and output: one image's outlines as ``(class, (k, 2) vertices)``, in the COCO convention of
:mod:`converters.annotations.coco` (x right, y down, pixels, origin at the top-left corner of the
top-left pixel; the spine upright, as on a lateral radiograph); classes ``lumbar`` and
``sacrum`` (anything else passes through). Only lumbar outlines are cut; an outline with fewer
than 3 vertices, one not finite or without area passes through untouched. A mask's
8-connected component traced along the pixel edges can touch itself at a pixel corner (two
bodies joined diagonally): its parts are taken as one outline.

Fragments: a lumbar outline under :data:`FRAGMENT_SHARE` of the bodies' area (the median area of
the lumbar outlines, specks under :data:`SPECK_SHARE` of the largest left out of that median)
is a speck or a piece of a body a model left beside the spine: it is never cut, never a
yardstick, takes no part in the spine's axis (an island beside the spine would bend it, and a
body measured across a bent axis looks tall), and :func:`levelled`, which gives each outline
its level bottom-up from the sacrum (:func:`converters.spine.levels.levels_bottom_up`, by the
polygons' centroids and areas), gives it none (a speck beside the sacrum took L5 and shifted
every level above it; on bench_refine's validation images, before the island guard of step 3,
leaving fragments unlevelled took U-Net's lordosis from 2.46 deg on 76 % of the images to 2.06
deg on 80 %, PSPNet's from 3.27 to 2.14 deg).

Method (:func:`fused_pieces`), with the other lumbar outlines ordered cranial to caudal
(centroid y):

1. each outline's *height* is how much of it lines along the spine's axis there cross (the
   axis: the direction from the centroid of the outline above to the one below; the outline's
   own where it has only one neighbour), their median over the middle half of its width
   (:func:`_thickness`; its extent along the axis is no height: a body tilted against the axis
   adds its width x the sine of the tilt, once per blob as once per body, and on bench_refine's
   validation images fused pairs of tilted bodies measured under 1.6 bodies and were left
   whole); its *width* is its extent across; an outline under :data:`NARROW_SHARE` of the
   widest one's width is a sliver of a body, never cut nor a yardstick;
2. the body height ``h``: of the outlines shaped like a body (height between
   :data:`MIN_ASPECT` and :data:`MAX_ASPECT` x width: a vertebra cut in half by the image's
   edge is not, nor is a fused blob), the largest group whose heights lie within
   :data:`SINGLE_MAX` x its shortest (ties: the shorter group), its median (so neither a
   vertebra the edge cut short nor fused pairs make the yardstick); the disc's height ``d``:
   the median step between neighbouring single bodies' centroids less ``h`` (within 0 and
   ``h / 2``; ``h / 5`` without two single neighbours);
3. an outline taller than :data:`~converters.spine.endplates.FUSED_FACTOR` x ``h`` (the rule
   by which :func:`~converters.spine.endplates.find_vertebrae` calls a blob fused: about 1.6
   bodies, not two) and tall for its width as no body is (height over width at least
   :data:`ISLAND_FACTOR` x the single bodies' median, :data:`BODY_ASPECT` where fewer than two
   say: measured across an axis an island bent, a body's height and width grow alike; with
   heights as extents and no such guard, a body-sized island beside the spine cut a healthy
   body in 3358 of 4800 placements and read a lordosis on 451; 1.4, not 1.6: two bodies
   overlapping in projection, wider than one, measured 1.5 x a body's aspect) holds
   ``n = round((height + d) / (h + d))`` bodies, or one more (discs overlapping in projection
   leave no disc inside the blob): of the two counts, the one whose pieces come nearest ``h``.
   With ``n >= 2`` it is cut ``n - 1`` times across the axis, each cut within ``0.3 h`` of
   where the disc's middle would lie (the blob's own discs being what its height leaves beyond
   its bodies, at most ``d``): in the middle of its waist, where the outline is narrowest (its
   width across the axis, measured every pixel or at :data:`SAMPLES` points, within half a
   pixel of the least), if it has one there (narrower than :data:`WAIST_SHARE` x the blob's
   median width over its whole height), else where the disc's middle would lie (two bodies
   overlapping in projection have no waist between them: the outline is widest where their
   endplates flare, narrowest at each body's concave walls, and on bench_refine's validation
   images cutting there put the cut mid-body; a waist shallower than that between bodies of
   unequal heights is cut where equal ones would meet, and the refinement's band must reach
   the disc). Each piece is trimmed by half such a disc at a cut, so that the pieces'
   endplates, the priors the refinement (:mod:`converters.spine.refine`) searches the image
   around, lie where the disc's edges would;
4. a piece is the largest polygon of the outline between its two cuts; its vertices are the
   polygon's exterior (the cut edges are straight, the corners where they meet the outline
   fractional). A piece shorter than :data:`MIN_PIECE` x ``h`` or taller than
   :data:`SINGLE_MAX` x ``h`` is no body: that count was wrong, and with neither count right
   the blob is left whole (on the demo's test set a PSPNet blob of four bodies, cut into
   slivers, read the lordosis 10 deg small; on bench_refine's validation images the short
   limit cost DeepLabv3 2 % of the images measured and nothing elsewhere; 0.5 x ``h``: 4-6 %).

Never a guess about the count: an outline not tall enough stays as it is (and
``find_vertebrae`` still calls it fused where it is); fewer than two lumbar outlines, or no
body-shaped one to measure by, leave everything as it is. Where the disc was not seen because
the bodies overlap in projection, the refined endplates are not found on the image, or fail
the plausibility checks (:mod:`converters.spine.plausible`), and the levels are withheld there.
Used by evaluate and propose for semantic models' components (``measures.split_fused``), never
for readers' polygons (a reader draws one polygon per vertebra) nor instance models' masks (on
bench_refine's validation images, cutting Mask R-CNN's tall masks measured the lordosis on 7 %
more images, 7 deg off on them: such a mask is rarely two bodies with a disc between).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from shapely.geometry import LineString, Polygon
from shapely.ops import unary_union
from shapely.validation import make_valid

from converters.spine.endplates import FUSED_FACTOR, unit_vector
from converters.spine.levels import levels_bottom_up

FRAGMENT_SHARE = 0.3     # of the bodies' area: a fragment, never cut, no yardstick, no level
SPECK_SHARE = 0.05       # of the largest outline's area: a speck, not counted in the median
NARROW_SHARE = 0.6       # of the widest outline's width: a fragment too (a sliver of a body)
MIN_ASPECT = 0.5         # height / width under this: no yardstick (a vertebra cut by the edge)
MAX_ASPECT = 1.2         # ... over this: no yardstick either (a fused blob)
BODY_ASPECT = 0.7        # a lumbar body's height / depth, where fewer than two bodies say
SINGLE_MAX = 1.5         # x the shortest body-shaped outline: still one body
SEARCH = 0.3             # x the body height: where a cut may move to the narrowest point
SAMPLES = 64             # widths measured per cut, at most (every pixel on the demo)
MIN_PIECE = 0.4          # x the body height: a piece shorter is no body (the blob stays whole)
THICK_LINES = 9          # lines along the axis that measure an outline's height
WAIST_SHARE = 0.9        # x the blob's median width: narrower near a cut is a waist
ISLAND_FACTOR = 1.4      # x the single bodies' height / width: a blob is at least this tall

Item = tuple[str, np.ndarray]


def _polygon(points) -> Polygon | None:
    """An outline as one polygon (made valid; parts touching at a pixel corner, as a mask's
    8-connected component traces, merged), None when it has no area or is not finite."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 3 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        return None
    geom = make_valid(Polygon(pts))
    polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
    if len(polys) > 1:
        merged = unary_union(polys).buffer(1e-3, join_style=2)
        polys = [g for g in getattr(merged, "geoms", [merged]) if g.geom_type == "Polygon"]
    best = max(polys, key=lambda g: g.area, default=None)
    return best if best is not None and best.area > 0 else None


def _far(poly: Polygon) -> float:
    """A length beyond the polygon wherever it lies (for lines and bands across it)."""
    x0, y0, x1, y1 = poly.bounds
    return 2.0 * (abs(x0) + abs(y0) + abs(x1) + abs(y1) + 1.0)


def _band(poly: Polygon, origin: np.ndarray, axis: np.ndarray, lo: float, hi: float
          ) -> Polygon | None:
    """The largest polygon of ``poly`` whose points lie between ``lo`` and ``hi`` along
    ``axis`` from ``origin``."""
    across = np.array([-axis[1], axis[0]]) * _far(poly)
    corners = [origin + axis * lo - across, origin + axis * lo + across,
               origin + axis * hi + across, origin + axis * hi - across]
    piece = poly.intersection(Polygon(corners))
    polys = [g for g in getattr(piece, "geoms", [piece]) if g.geom_type == "Polygon"]
    best = max(polys, key=lambda g: g.area, default=None)
    return best if best is not None and best.area > 0 else None


def _width(poly: Polygon, point: np.ndarray, axis: np.ndarray) -> float:
    """The outline's width across ``axis`` through ``point``."""
    across = np.array([-axis[1], axis[0]]) * _far(poly)
    return float(poly.intersection(LineString([point - across, point + across])).length)


def _cuts(poly: Polygon, origin: np.ndarray, axis: np.ndarray, lo: float, height: float,
          n: int, h: float, d: float) -> list[float]:
    """Where a blob of ``n`` bodies is cut, along ``axis`` from ``origin`` (step 3)."""
    body = (height - (n - 1) * d) / n
    step = max(1.0, 2 * SEARCH * h / SAMPLES)
    # the blob's own width: the median over its whole height (near a cut, a disc's neck can
    # fill most of the search and make its median)
    typical = float(np.median([_width(poly, origin + axis * t, axis)
                               for t in np.linspace(lo, lo + height, SAMPLES)]))
    cuts = []
    for j in range(1, n):
        expected = lo + j * body + (j - 0.5) * d
        ts = np.arange(expected - SEARCH * h, expected + SEARCH * h + step / 2, step)
        widths = np.array([_width(poly, origin + axis * t, axis) for t in ts])
        if widths.min() > WAIST_SHARE * typical:
            cuts.append(float(expected))     # no waist (bodies overlapping in projection)
            continue
        narrow = widths <= widths.min() + 0.5          # the waist: the middle of its run
        a = b = int(np.argmin(widths))
        while a > 0 and narrow[a - 1]:
            a -= 1
        while b + 1 < len(ts) and narrow[b + 1]:
            b += 1
        cuts.append(float(ts[a] + ts[b]) / 2)
    return cuts


def _frames(polys: list[Polygon]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                           np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per outline (cranial to caudal): the spine's axis there, its lowest projection on it
    (from the centroid), its extent along it, its height (:func:`_thickness`) and its width
    across it (step 1)."""
    cent = [np.array(p.centroid.coords[0]) for p in polys]
    axes, lows, extents, heights, widths = [], [], [], [], []
    for k, p in enumerate(polys):
        axis = cent[min(k + 1, len(cent) - 1)] - cent[max(k - 1, 0)]
        axis = unit_vector(axis) if np.linalg.norm(axis) > 1e-9 else np.array([0.0, 1.0])
        pts = np.asarray(p.exterior.coords) - cent[k]
        along, across = pts @ axis, pts @ np.array([-axis[1], axis[0]])
        axes.append(axis)
        lows.append(float(along.min()))
        extents.append(float(np.ptp(along)))
        heights.append(_thickness(p, axis))
        widths.append(float(np.ptp(across)))
    return axes, np.array(lows), np.array(extents), np.array(heights), np.array(widths), cent


def _thickness(poly: Polygon, axis: np.ndarray) -> float:
    """The outline's height along ``axis``: the median length of it that lines along the axis
    cross, at :data:`THICK_LINES` offsets over the middle half of its width (its extent along
    the axis is no height: a body tilted by t against the axis adds its width x sin t, once
    per blob as per body, so a fused pair measured 1.57 bodies where its bodies' own heights
    made it 1.8)."""
    axis = np.asarray(axis, dtype=np.float64)
    normal = np.array([-axis[1], axis[0]])
    centre = np.array(poly.centroid.coords[0])
    across = (np.asarray(poly.exterior.coords) - centre) @ normal
    lo, hi = float(across.min()), float(across.max())
    far = _far(poly) * axis
    lengths = [poly.intersection(LineString([centre + u * normal - far,
                                             centre + u * normal + far])).length
               for u in np.linspace(lo + (hi - lo) / 4, hi - (hi - lo) / 4, THICK_LINES)]
    return float(np.median(lengths))


def _fragment_area(areas: np.ndarray) -> float:
    """Under this area a lumbar outline is a fragment: :data:`FRAGMENT_SHARE` of the median
    area of the outlines that are not specks (under :data:`SPECK_SHARE` of the largest: a
    column of specks would make the median theirs)."""
    return FRAGMENT_SHARE * float(np.median(areas[areas >= SPECK_SHARE * areas.max()]))


def _body_height(height: np.ndarray, width: np.ndarray) -> float | None:
    """The body height (step 2): of the outlines shaped like a body, the largest group whose
    heights lie within :data:`SINGLE_MAX` x its shortest (ties: the shorter group), its median;
    None when no outline is shaped like a body."""
    shaped = height[(height >= MIN_ASPECT * width) & (height <= MAX_ASPECT * width)]
    if not len(shaped):
        return None
    groups = [shaped[(shaped >= c) & (shaped <= SINGLE_MAX * c)] for c in np.sort(shaped)]
    return float(np.median(max(groups, key=len)))     # max keeps the first of equals


def _pieces(p: Polygon, origin: np.ndarray, axis: np.ndarray, lo: float, tall: float, n: int,
            h: float, d: float) -> tuple[list[np.ndarray], float] | None:
    """A blob cut into ``n`` bodies (steps 3 and 4): the pieces' outlines and how far the
    farthest piece's height lies from ``h``; None when a piece is no body (shorter than
    :data:`MIN_PIECE` x ``h``, or taller than :data:`SINGLE_MAX` x ``h``)."""
    bounds = [lo - 1.0, *_cuts(p, origin, axis, lo, tall, n, h, d), lo + tall + 1.0]
    pieces = [_band(p, origin, axis, a + (d / 2 if j else 0.0), b - (d / 2 if j < n - 1 else 0.0))
              for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    if any(q is None for q in pieces):
        return None
    heights = [_thickness(q, axis) for q in pieces]
    if not all(MIN_PIECE * h <= t <= SINGLE_MAX * h for t in heights):
        return None
    return [np.asarray(q.exterior.coords)[:-1] for q in pieces], max(abs(t - h) for t in heights)


def fused_pieces(items: Sequence[Item]) -> dict[int, list[np.ndarray]]:
    """Index of each fused lumbar outline of ``items`` -> its bodies' outlines, cranial to
    caudal (module docstring); outlines not cut are not in it."""
    lumbar = [(i, p) for i, (cls, pts) in enumerate(items) if cls == "lumbar"
              for p in [_polygon(pts)] if p is not None]
    if len(lumbar) < 2:
        return {}
    small = _fragment_area(np.array([p.area for _, p in lumbar]))
    lumbar = [(i, p) for i, p in lumbar if p.area >= small]
    lumbar.sort(key=lambda t: t[1].centroid.y)        # fragments out: they bend the axis
    if len(lumbar) < 2:
        return {}
    axes, lows, extent, height, width, cent = _frames([p for _, p in lumbar])
    whole = width >= NARROW_SHARE * width.max()
    h = _body_height(height[whole], width[whole])
    if h is None or not math.isfinite(h) or h <= 0:
        return {}
    single = whole & (height <= FUSED_FACTOR * h)
    steps = [float(np.linalg.norm(cent[k + 1] - cent[k])) for k in range(len(lumbar) - 1)
             if single[k] and single[k + 1]]
    d = float(np.clip(np.median(steps) - h, 0.0, h / 2)) if steps else h / 5
    # a blob is tall for its width as a body is not: measured across a bent axis (an island
    # beside the spine pulls it) a body's height and width grow alike
    aspect = float(np.median(height[single] / width[single])) if single.sum() >= 2 \
        else BODY_ASPECT
    cut: dict[int, list[np.ndarray]] = {}
    for k, (i, p) in enumerate(lumbar):
        n = int(round((height[k] + d) / (h + d)))
        if single[k] or not whole[k] or n < 2 or \
                height[k] < ISLAND_FACTOR * aspect * width[k]:
            continue
        # discs overlapping in projection make n one short: of n and n + 1 bodies, the count
        # whose pieces are nearest the body height
        # (the blob's own discs: what its height leaves beyond its bodies, at most d)
        tried = [t for t in (_pieces(p, cent[k], axes[k], lows[k], extent[k], count, h,
                                     float(np.clip((height[k] - count * h) / (count - 1), 0, d)))
                             for count in (n, n + 1)) if t is not None]
        if tried:
            cut[i] = min(tried, key=lambda t: t[1])[0]
    return cut


def split_fused(items: Sequence[Item]) -> list[Item]:
    """The outlines with every fused lumbar blob replaced by its bodies' outlines (module
    docstring); the others as given, in the order given."""
    cut = fused_pieces(items)
    out: list[Item] = []
    for i, item in enumerate(items):
        out += [("lumbar", piece) for piece in cut[i]] if i in cut else [item]
    return out


def levelled(items: Sequence[Item]) -> list[tuple[str | None, np.ndarray]]:
    """``(level, outline)`` of each outline: its level bottom-up from the sacrum (None: none);
    a lumbar fragment (:func:`_fragment_area`: a speck a model left beside a vertebra) gets
    none."""
    polys = [_polygon(pts) for _, pts in items]
    cents = [(p.centroid.x, p.centroid.y) if p is not None else (np.nan, np.nan) for p in polys]
    areas = [p.area if p is not None else 0.0 for p in polys]
    classes = [cls if p is not None else "" for (cls, _), p in zip(items, polys)]
    lumbar = [a for a, c in zip(areas, classes) if c == "lumbar"]
    if lumbar:                 # a fragment takes no level (it would shift those above it)
        small = _fragment_area(np.array(lumbar))
        classes = ["" if c == "lumbar" and a < small else c for a, c in zip(areas, classes)]
    levels = levels_bottom_up(classes, cents, areas)
    return [(lv, np.asarray(pts, dtype=np.float64)) for lv, (_, pts) in zip(levels, items)]
