"""The readers' consensus of one image: one polygon per vertebra from several readers' polygons.

Input: per reader, the image's validated outlines (:class:`~converters.annotations.regions.Outline`,
COCO convention of :mod:`converters.annotations.coco`: continuous pixels, (0, 0) the top-left
corner of the top-left pixel) with their levels (:mod:`converters.spine.levels`).

Matching: vertebrae by their level (``L1``..``L5``, ``S1``); outlines without a level (implants,
when kept) greedily by IoU (at least :data:`MATCH_IOU`, best pair first). Where a reader drew
more than five lumbar vertebrae (left unlevelled: a transitional spine), every reader's lumbar
outlines are matched by IoU and the consensus's levels assigned anew
(:func:`converters.spine.levels.assign_levels`). A structure enters the
consensus when at least half of the image's readers drew it (two readers: either; three: two).

Fusion, in a window around the structure (rasterized by pycocotools as the masks are, on a grid
:func:`supersampling` times finer than the image where the window is small, so that the consensus
keeps sub-pixel corners at the demo's resolution):

- three or more readers: STAPLE (Warfield et al. 2004: each reader's sensitivity and
  specificity estimated by EM, so a reader who systematically draws larger weighs less), the
  pixels whose probability is at least 0.5. :func:`staple` runs the binary STAPLE EM as ITK's
  ``STAPLEImageFilter`` sets it up (the prior the readers' mean foreground fraction,
  sensitivities and specificities starting at 0.99999, iterated to seven digits) on the
  histogram of the readers' vote patterns: a pixel's probability depends only on which readers
  marked it, so the EM runs over at most 2^readers patterns instead of every pixel, exactly the
  per-pixel EM (tested) at a 10th to a 30th of SimpleITK's time. On readers' masks with the
  usual edge noise it gives SimpleITK's probabilities to 1e-5 (tested); where the likelihood
  has several optima (noise-free boxes nested in each other) the two can stop at different
  ones, and where every reader marked every pixel (or none) SimpleITK returns NaN and this
  all ones (or zeros);
- two readers: majority vote, the tie (one reader for, one against) settled by the mean of their
  signed distance maps: the consensus outline runs midway between the two outlines.

Then the fused mask's outer contour (:func:`~converters.annotations.coco.mask_outline`)
simplified to at most :data:`MAX_POINTS` vertices (the study's budget per vertebra, Douglas-Peucker
as for model proposals); a fused mask that is empty (readers whose outlines do not overlap)
yields no instance, and :func:`consensus_with_gaps` says so (convert: a ``no_consensus``
problem). The consensus outlines
carry the class most of the readers gave and ``region`` -1 (no VIA region).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import cv2
import numpy as np
from shapely.geometry import Polygon
from shapely.validation import make_valid

from converters.annotations.coco import flat, mask_outline, rasterize_window
from converters.annotations.proposals import largest_part, polygon_iou, simplify
from converters.annotations.regions import Outline
from converters.spine.levels import assign_levels

#: vertices per consensus polygon (the study's budget per vertebra)
MAX_POINTS = 15
#: IoU at which two readers' unlevelled outlines (implants) are the same structure
MATCH_IOU = 0.5
#: pixels of the fine grid in a fusion window, at most (the grid is 1-4x the image's)
FINE_PIXELS = 160_000


def supersampling(width: float, height: float) -> int:
    """How many times finer than the image a ``width`` x ``height`` window is fused: 4 for a
    small window (a vertebra at the demo's 640-pixel height), 1 at full resolution."""
    area = max(width * height, 1.0)
    return int(max(1, min(4, np.floor(np.sqrt(FINE_PIXELS / area)))))


def _masks(outlines: Sequence[Outline]) -> tuple[list[np.ndarray], float, float, int]:
    """Each outline rasterized on one window's fine grid; the window's origin and the factor."""
    xs = np.concatenate([np.asarray(o.xs, float) for o in outlines])
    ys = np.concatenate([np.asarray(o.ys, float) for o in outlines])
    x0, y0 = np.floor(xs.min()) - 2, np.floor(ys.min()) - 2
    w, h = np.ceil(xs.max()) + 2 - x0, np.ceil(ys.max()) + 2 - y0
    f = supersampling(w, h)
    W, H = int(w * f), int(h * f)
    masks = []
    for o in outlines:
        m = np.zeros((H, W), np.uint8)
        win = rasterize_window(flat([(x - x0) * f for x in o.xs], [(y - y0) * f for y in o.ys]),
                               H, W)
        if win is not None:
            m[win[0], win[1]] = win[2]
        masks.append(m)
    return masks, float(x0), float(y0), f


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Positive inside, negative outside (pixels to the nearest pixel of the other side)."""
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    return inside - outside


def fuse(masks: Sequence[np.ndarray]) -> np.ndarray:
    """The consensus of binary masks of one window (module docstring): uint8 0 / 1."""
    if len(masks) == 1:
        return masks[0].copy()
    if len(masks) == 2:
        votes = masks[0].astype(np.int16) + masks[1]
        tie = votes == 1
        out = (votes == 2).astype(np.uint8)
        mid = (_signed_distance(masks[0]) + _signed_distance(masks[1])) >= 0
        out[tie & mid] = 1
        return out
    out = (staple(masks) >= 0.5).astype(np.uint8)
    if not out.any():  # STAPLE degenerates when the readers barely overlap: majority vote
        out = (np.sum(masks, axis=0) * 2 > len(masks)).astype(np.uint8)
    return out


def staple(masks: Sequence[np.ndarray], *, tol: float = 1e-7,
           max_iterations: int = 1000) -> np.ndarray:
    """STAPLE's probability map of binary masks of one window (module docstring)."""
    code = np.zeros(np.size(masks[0]), np.int64)                     # each pixel's vote pattern
    for j, m in enumerate(masks):
        code |= np.asarray(m, bool).ravel().astype(np.int64) << j
    if len(masks) <= 16:
        counts = np.bincount(code, minlength=1 << len(masks))
        patterns = np.flatnonzero(counts)
        n = counts[patterns].astype(np.float64)
    else:   # more readers than a table of every pattern holds: the patterns present
        patterns, code, n = np.unique(code, return_inverse=True, return_counts=True)
        counts, n = np.ones(len(patterns)), n.astype(np.float64)
    weights = 1 << np.arange(len(masks), dtype=np.int64)
    d = ((patterns[None, :] & weights[:, None]) > 0).astype(np.float64)   # (readers, patterns)
    prior = float((d * n).sum() / (len(masks) * n.sum()))
    p = np.full(len(masks), 0.99999)
    q = np.full(len(masks), 0.99999)
    w = np.zeros(len(patterns))
    for _ in range(max_iterations):
        a = prior * np.prod(np.where(d > 0, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - prior) * np.prod(np.where(d > 0, 1 - q[:, None], q[:, None]), axis=0)
        w = np.divide(a, a + b, out=np.zeros_like(a), where=(a + b) > 0)
        sw, sv = float(n @ w), float(n @ (1 - w))
        p_new = (d * w * n).sum(axis=1) / sw if sw > 0 else p
        q_new = ((1 - d) * (1 - w) * n).sum(axis=1) / sv if sv > 0 else q
        change = max(np.abs(p_new - p).max(), np.abs(q_new - q).max())
        p, q = p_new, q_new
        if change < tol:
            break
    if len(masks) > 16:
        return w[code].reshape(np.shape(masks[0]))
    prob = np.zeros(len(counts))
    prob[patterns] = w
    return prob[code].reshape(np.shape(masks[0]))


def _polygon(mask: np.ndarray, x0: float, y0: float,
             f: int) -> tuple[list[float], list[float]] | None:
    contour = mask_outline(mask)
    if contour is None or len(contour) < 3:
        return None
    pts = simplify(contour, MAX_POINTS)
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)  # a contour's pinch repeats a vertex
    pts = pts[keep] / f + (x0, y0)
    poly = Polygon(pts)
    if not poly.is_valid:  # a pinch between diagonal pixels: the largest valid part
        part = largest_part(make_valid(poly))
        if part is None:
            return None
        pts = simplify(np.asarray(part.exterior.coords)[:-1], MAX_POINTS)
    if len(pts) < 3 or Polygon(pts).area <= 0:
        return None
    return [float(x) for x in pts[:, 0]], [float(y) for y in pts[:, 1]]


def fuse_outlines(outlines: Sequence[Outline], level: str | None) -> Outline | None:
    """One consensus outline of the readers' outlines of one structure."""
    masks, x0, y0, f = _masks(outlines)
    poly = _polygon(fuse(masks), x0, y0, f)
    if poly is None:
        return None
    classes = [o.cls for o in outlines]
    cls = max(sorted(set(classes)), key=classes.count)
    return Outline(cls, poly[0], poly[1], -1, level)


def _match_unlevelled(readers: dict[str, list[Outline]]) -> list[list[Outline]]:
    """Unlevelled outlines grouped across readers: greedy, best IoU first, one per reader."""
    groups: list[dict[str, Outline]] = []
    for reader in sorted(readers):
        for o in (o for o in readers[reader] if o.level is None):
            best, best_iou = None, MATCH_IOU
            for g in groups:
                if reader in g:
                    continue
                iou = max(polygon_iou(o.xs, o.ys, other.xs, other.ys) for other in g.values())
                if iou >= best_iou:
                    best, best_iou = g, iou
            if best is None:
                groups.append({reader: o})
            else:
                best[reader] = o
    return [list(g.values()) for g in groups]


def consensus_with_gaps(readers: dict[str, list[Outline]]
                        ) -> tuple[list[Outline], list[str]]:
    """The consensus outlines of one image (module docstring), and why a structure some reader
    drew is not among them (one line each: convert records them as problems)."""
    n = len(readers)
    need = (n + 1) // 2
    # a reader who drew more than five lumbar vertebrae has them unlevelled (a transitional
    # spine): every reader's lumbar outlines are then matched by IoU, the levels assigned anew
    by_iou = any(o.cls == "lumbar" and o.level is None for outs in readers.values() for o in outs)
    if by_iou:
        readers = {r: [replace(o, level=None) if o.cls == "lumbar" else o for o in outs]
                   for r, outs in readers.items()}
    by_level: dict[str, dict[str, Outline]] = {}
    for reader in sorted(readers):
        for o in readers[reader]:
            if o.level is not None:  # a level a reader drew twice: their first outline
                by_level.setdefault(o.level, {}).setdefault(reader, o)
    groups = [(lv, list(outs.values())) for lv, outs in by_level.items()]
    groups += [(None, g) for g in _match_unlevelled(readers)]
    out, gaps = [], []
    for level, outs in groups:
        what = level or f"a {outs[0].cls}"
        if len(outs) < need:
            gaps.append(f"{what}: drawn by {len(outs)} of {n} readers (the consensus needs "
                        f"{need})")
            continue
        fused = fuse_outlines(outs, level)
        if fused is None:
            gaps.append(f"{what}: the readers' outlines do not overlap enough to agree on one")
        else:
            out.append(fused)
    if by_iou:
        assign_levels(out)
    return out, gaps


def consensus(readers: dict[str, list[Outline]]) -> list[Outline]:
    """The consensus outlines of one image (module docstring)."""
    return consensus_with_gaps(readers)[0]
