"""A model's lumbar outline that covers two or more vertebral bodies (a fused blob: a semantic
model's connected component across a disc it did not see) cut into one outline per body before
the levels are assigned, so that the clinical measures (:mod:`converters.spine.measures`) are made
from what the model did see instead of withholding every level above the blob.

Input and output: one image's outlines as ``(class, (k, 2) vertices)``, in the COCO convention of
:mod:`converters.annotations.coco` (x right, y down, pixels, origin at the top-left corner of the
top-left pixel); classes ``lumbar`` and ``sacrum`` (anything else passes through). Only lumbar
outlines are cut. :func:`levelled` then gives each outline its level bottom-up from the sacrum
(:func:`converters.spine.levels.levels_bottom_up`, by the polygons' centroids and areas).

Method (:func:`split_fused`), with the lumbar outlines ordered cranial to caudal (centroid y):

1. each outline's *height* is its extent along the spine's axis there (the direction from the
   centroid of the outline above to the one below, as :mod:`converters.spine.endplates` takes
   it), its *width* its extent across; outlines under :data:`FRAGMENT_SHARE` of the median area
   or :data:`NARROW_SHARE` of the median width are fragments (a body cut off by the image's
   edge, a sliver of one), kept but not used as a yardstick;
2. the body height ``h``: the median height of the outlines no taller than :data:`SINGLE_MAX`
   x the shortest (so two fused pairs of four bodies do not make the yardstick); the disc's
   height ``d``: the median step between neighbouring single bodies' centroids less ``h``
   (within 0 and ``h / 2``; ``h / 5`` without two single neighbours);
3. an outline taller than :data:`~converters.spine.endplates.FUSED_FACTOR` x ``h`` (the rule
   by which :func:`~converters.spine.endplates.find_vertebrae` calls a blob fused) holds
   ``n = round((height + d) / (h + d))`` bodies; with ``n >= 2`` it is cut ``n - 1`` times
   across the axis, each cut in the middle of where the outline is narrowest (its width
   across the axis, measured every pixel, within half a pixel of the least) within ``0.3 h``
   of where the disc's middle would lie, and each piece is trimmed by ``d / 2`` at a cut (the
   disc's own height), so that the pieces' endplates, the priors the refinement
   (:mod:`converters.spine.refine`) searches the image around, lie where the disc's edges
   would;
4. a piece is the largest polygon of the outline between its two cuts; its vertices are the
   polygon's exterior (the cut edges are straight). A piece shorter than :data:`MIN_PIECE`
   x ``h`` is no body: the count was wrong, and the blob is left whole.

Never a guess about the count: an outline not tall enough for two bodies stays as it is (and
``find_vertebrae`` still calls it fused where it is); fewer than two lumbar outlines, or no
whole body to measure by, leave everything as it is, and a sliver among the pieces leaves its
blob whole (on the demo's test set a PSPNet blob of four bodies, cut into slivers, read the
lordosis 10 deg small; on bench_refine's validation images the rule costs DeepLabv3 2 % of the
images measured and nothing elsewhere; 0.5 x ``h`` would cost 4-6 %). Where the disc was
not seen because the bodies overlap in projection, the refined endplates are not found on the
image, or fail the plausibility checks (:mod:`converters.spine.plausible`), and the levels are
withheld there.
Used by evaluate and propose for semantic models' components (``measures.split_fused``), never
for readers' polygons (a reader draws one polygon per vertebra) nor instance models' masks (on
bench_refine's validation images, cutting Mask R-CNN's tall masks measured the lordosis on 7 %
more images, 7 deg off on them: such a mask is rarely two bodies with a disc between).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from shapely.geometry import LineString, Polygon
from shapely.validation import make_valid

from converters.spine.endplates import FUSED_FACTOR, unit_vector
from converters.spine.levels import levels_bottom_up

FRAGMENT_SHARE = 0.3     # of the median lumbar area: a fragment, not a yardstick
NARROW_SHARE = 0.6       # of the median lumbar width: a fragment too (a sliver of a body)
SINGLE_MAX = 1.5         # x the shortest outline: tall enough still to be one body
SEARCH = 0.3             # x the body height: where a cut may move to the narrowest point
MIN_PIECE = 0.4          # x the body height: a piece shorter is no body (the blob stays whole)

Item = tuple[str, np.ndarray]


def _polygon(points: np.ndarray) -> Polygon | None:
    """The largest polygon of an outline (made valid), None when it has no area."""
    if len(points) < 3:
        return None
    geom = make_valid(Polygon(np.asarray(points, dtype=np.float64)))
    polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
    best = max(polys, key=lambda g: g.area, default=None)
    return best if best is not None and best.area > 0 else None


def _band(poly: Polygon, origin: np.ndarray, axis: np.ndarray, lo: float, hi: float
          ) -> Polygon | None:
    """The largest polygon of ``poly`` whose points lie between ``lo`` and ``hi`` along
    ``axis`` from ``origin``."""
    across = np.array([-axis[1], axis[0]]) * 1e6
    corners = [origin + axis * lo - across, origin + axis * lo + across,
               origin + axis * hi + across, origin + axis * hi - across]
    piece = poly.intersection(Polygon(corners))
    polys = [g for g in getattr(piece, "geoms", [piece]) if g.geom_type == "Polygon"]
    best = max(polys, key=lambda g: g.area, default=None)
    return best if best is not None and best.area > 0 else None


def _width(poly: Polygon, point: np.ndarray, axis: np.ndarray) -> float:
    """The outline's width across ``axis`` through ``point``."""
    across = np.array([-axis[1], axis[0]]) * 1e6
    return float(poly.intersection(LineString([point - across, point + across])).length)


def _cuts(poly: Polygon, origin: np.ndarray, axis: np.ndarray, lo: float, height: float,
          n: int, h: float, d: float) -> list[float]:
    """Where a blob of ``n`` bodies is cut, along ``axis`` from ``origin`` (step 3)."""
    body = (height - (n - 1) * d) / n
    cuts = []
    for j in range(1, n):
        expected = lo + j * body + (j - 0.5) * d
        ts = np.arange(expected - SEARCH * h, expected + SEARCH * h + 0.5, 1.0)
        widths = np.array([_width(poly, origin + axis * t, axis) for t in ts])
        narrow = widths <= widths.min() + 0.5          # the waist: the middle of its run
        a = b = int(np.argmin(widths))
        while a > 0 and narrow[a - 1]:
            a -= 1
        while b + 1 < len(ts) and narrow[b + 1]:
            b += 1
        cuts.append(float(ts[a] + ts[b]) / 2)
    return cuts


def _frames(lumbar: list[tuple[int, Polygon]], cent: list[np.ndarray]
            ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Per outline: the spine's axis there, its lowest projection on it (from the centroid),
    its height along it and its width across it (step 1)."""
    axes, lows, heights, widths = [], [], [], []
    for k, (_, p) in enumerate(lumbar):
        axis = unit_vector(cent[min(k + 1, len(cent) - 1)] - cent[max(k - 1, 0)])
        pts = np.asarray(p.exterior.coords) - cent[k]
        along, across = pts @ axis, pts @ np.array([-axis[1], axis[0]])
        axes.append(axis)
        lows.append(float(along.min()))
        heights.append(float(np.ptp(along)))
        widths.append(float(np.ptp(across)))
    return axes, np.array(lows), np.array(heights), np.array(widths)


def fused_pieces(items: Sequence[Item]) -> dict[int, list[np.ndarray]]:
    """Index of each fused lumbar outline of ``items`` -> its bodies' outlines, cranial to
    caudal (module docstring); outlines not cut are not in it."""
    lumbar = [(i, p) for i, (cls, pts) in enumerate(items) if cls == "lumbar"
              for p in [_polygon(np.asarray(pts))] if p is not None]
    if len(lumbar) < 2:
        return {}
    lumbar.sort(key=lambda t: t[1].centroid.y)
    cent = [np.array(p.centroid.coords[0]) for _, p in lumbar]
    axes, lows, height, width = _frames(lumbar, cent)
    areas = np.array([p.area for _, p in lumbar])
    whole = (areas >= FRAGMENT_SHARE * np.median(areas)) & \
        (width >= NARROW_SHARE * np.median(width))
    if not whole.any():
        return {}
    h = float(np.median(height[whole & (height <= SINGLE_MAX * height[whole].min())]))
    single = whole & (height <= FUSED_FACTOR * h)
    steps = [float(np.linalg.norm(cent[k + 1] - cent[k])) for k in range(len(lumbar) - 1)
             if single[k] and single[k + 1]]
    d = float(np.clip(np.median(steps) - h, 0.0, h / 2)) if steps else h / 5
    cut: dict[int, list[np.ndarray]] = {}
    for k, (i, p) in enumerate(lumbar):
        n = int(round((height[k] + d) / (h + d)))
        if single[k] or not whole[k] or n < 2:
            continue
        bounds = [lows[k] - 1.0, *_cuts(p, cent[k], axes[k], lows[k], height[k], n, h, d),
                  lows[k] + height[k] + 1.0]
        pieces = [_band(p, cent[k], axes[k], a + (d / 2 if j else 0.0),
                        b - (d / 2 if j < n - 1 else 0.0))
                  for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        if all(q is not None and np.ptp(np.asarray(q.exterior.coords) @ axes[k]) >= MIN_PIECE * h
               for q in pieces):          # a sliver is no body: the count was wrong
            cut[i] = [np.asarray(q.exterior.coords)[:-1] for q in pieces]
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
    """``(level, outline)`` of each outline: its level bottom-up from the sacrum (None: none)."""
    polys = [_polygon(np.asarray(pts)) for _, pts in items]
    cents = [(p.centroid.x, p.centroid.y) if p is not None else (np.nan, np.nan) for p in polys]
    areas = [p.area if p is not None else 0.0 for p in polys]
    classes = [cls if p is not None else "" for (cls, _), p in zip(items, polys)]
    levels = levels_bottom_up(classes, cents, areas)
    return [(lv, np.asarray(pts, dtype=np.float64)) for lv, (_, pts) in zip(levels, items)]
