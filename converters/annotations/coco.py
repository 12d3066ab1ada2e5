"""COCO instances and class masks from polygons.

Coordinates (the COCO / pycocotools convention, used for every polygon in spinepipe):
continuous image coordinates, x to the right and y down, (0, 0) at the top-left *corner* of
the top-left pixel, so the centre of the pixel in row i, column j is (j + 0.5, i + 0.5).
VIA's integer vertices are read as such coordinates unchanged.

- ``segmentation``: one polygon ``[x1, y1, x2, y2, ...]`` per instance (iscrowd 0).
- ``area``: the polygon's area (shapely), not its bounding box; it matches the pixel count of
  the pycocotools rasterization to within the boundary pixels.
- ``bbox``: ``[x, y, w, h]`` of the polygon's vertices.
- ids are deterministic: images numbered 1.. in sorted file-name order, annotations 1.. in
  image order then region order.

Class masks (``uint8``): 0 background, 1 lumbar, 2 sacrum, 255 ignore. Masks are rasterized
with pycocotools itself (``frPyObjects`` + ``decode``, inside each polygon's bounding box: see
:func:`rasterize_window`), so a mask pixel is set exactly when COCO's own rasterization of the
polygon covers it. Where instances of different classes
overlap, the larger class value wins (sacrum over lumbar); instances of the same class fuse,
which is the semantic models' view of overlapping vertebrae.

Cost, linear in the regions of an image (an image with thousands of regions converts in
about the time of thousands of images with one): the overlap map counts coverage in one pass
over the instances' windows (:func:`overlap_map`), and the overlapping instances are found
through shapely's ``STRtree`` spatial index, never by comparing every pair
(:func:`overlap_labels`).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np
import shapely
from pycocotools import mask as mask_utils
from shapely.geometry import Polygon

#: class name -> label value in masks and COCO category id
DEFAULT_CLASSES: dict[str, int] = {"lumbar": 1, "sacrum": 2}
IGNORE = 255


def flat(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Interleave vertex lists into COCO's ``[x1, y1, x2, y2, ...]``."""
    out: list[float] = []
    for x, y in zip(xs, ys):
        out += [float(x), float(y)]
    return out


def bbox(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    x0, y0 = float(min(xs)), float(min(ys))
    return [x0, y0, float(max(xs)) - x0, float(max(ys)) - y0]


def categories(classes: dict[str, int] = DEFAULT_CLASSES) -> list[dict]:
    return [{"id": cid, "name": name, "supercategory": "spine" if cid <= 2 else "implant"}
            for name, cid in sorted(classes.items(), key=lambda kv: kv[1])]


#: lossless PNG settings for label maps: no prediction filter, run-length zlib strategy
#: (about 4x faster than OpenCV's defaults on masks, and smaller)
PNG_LABEL_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                    cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER,
                    cv2.IMWRITE_PNG_FILTER_NONE]


def rasterize(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Boolean mask of one flat polygon, by pycocotools (the COCO evaluation's own raster)."""
    rles = mask_utils.frPyObjects([list(map(float, polygon))], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rasterize_window(polygon: Sequence[float], height: int,
                     width: int) -> tuple[slice, slice, np.ndarray] | None:
    """The same raster as :func:`rasterize`, only inside the polygon's bounding box.

    pycocotools rasterizes on a 5x grid of the vertices, so shifting a polygon by whole
    pixels shifts its raster exactly: rasterizing the shifted polygon in a window gives the
    full-image raster's pixels at a fraction of the cost. Returns (rows, cols, uint8 window).
    """
    xs, ys = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
    x0, y0 = max(int(np.floor(xs.min())) - 1, 0), max(int(np.floor(ys.min())) - 1, 0)
    x1, y1 = min(int(np.ceil(xs.max())) + 2, width), min(int(np.ceil(ys.max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return None
    shifted = np.empty(len(polygon))
    shifted[0::2], shifted[1::2] = xs - x0, ys - y0
    rle = mask_utils.frPyObjects([shifted.tolist()], y1 - y0, x1 - x0)[0]
    return slice(y0, y1), slice(x0, x1), mask_utils.decode(rle)


Window = tuple[slice, slice, np.ndarray]


def class_mask(height: int, width: int,
               instances: Iterable[tuple[int, Sequence[float]]]) -> np.ndarray:
    """uint8 class mask from ``(class value, flat polygon)`` pairs; larger value wins overlaps."""
    pairs = [(value, rasterize_window(poly, height, width)) for value, poly in instances]
    return paint(height, width, pairs)


def paint(height: int, width: int, windows: Iterable[tuple[int, Window | None]]) -> np.ndarray:
    """uint8 class mask from ``(class value, window)`` pairs (:func:`rasterize_window`)."""
    mask = np.zeros((height, width), np.uint8)
    for value, win in windows:
        if win is not None:
            rows, cols, m = win
            np.maximum(mask[rows, cols], m * np.uint8(value), out=mask[rows, cols])
    return mask


def overlap_map(height: int, width: int,
                windows: Sequence[Window | None]) -> np.ndarray | None:
    """uint8 map, 1 where two or more of the rasterized instances overlap; None when none do.

    One pass over the windows, counting coverage inside the windows' joint bounding box
    (``seen``: covered once, ``twice``: covered again), so the cost is linear in the number of
    instances and their windows' area, whatever their arrangement."""
    wins = [w for w in windows if w is not None]
    if len(wins) < 2:
        return None
    r0, r1 = min(w[0].start for w in wins), max(w[0].stop for w in wins)
    c0, c1 = min(w[1].start for w in wins), max(w[1].stop for w in wins)
    seen = np.zeros((r1 - r0, c1 - c0), np.uint8)
    twice = np.zeros_like(seen)
    for rows, cols, m in wins:
        at = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
        twice[at] |= seen[at] & m
        seen[at] |= m
    if not twice.any():
        return None
    out = np.zeros((height, width), np.uint8)
    out[r0:r1, c0:c1] = twice
    return out


def overlap_labels(polygons: Sequence[Polygon], labels: Sequence[str]) -> list[str]:
    """The sorted distinct ``"a/b"`` label pairs (each pair's labels sorted) of the polygons
    that overlap with a positive area: what testing every pair gives, found through one
    ``STRtree`` per label. A polygon looks for partners of one label only until that label
    pair is found, so thousands of polygons sharing a label (``?``: instances without a
    level) cost a few index queries each, not a comparison with every other polygon. (Only
    shapes that meet without overlapping, all at one point say, still cost a test per pair.)"""
    if len(polygons) < 2:
        return []
    geoms = np.asarray(polygons, dtype=object)
    names = sorted(set(labels))
    code = np.asarray([names.index(x) for x in labels])
    members = [np.flatnonzero(code == c) for c in range(len(names))]
    trees = [shapely.STRtree(geoms[idx]) for idx in members]
    found = np.zeros((len(names), len(names)), bool)
    for i in range(len(geoms)):
        for c, idx in enumerate(members):
            if found[code[i], c]:
                continue
            hits = idx[trees[c].query(geoms[i], predicate="intersects")]
            hits = hits[hits > i]  # each pair once, from its first polygon
            if len(hits) and (shapely.area(shapely.intersection(geoms[i], geoms[hits])) > 0).any():
                found[code[i], c] = found[c, code[i]] = True
    return sorted({f"{names[a]}/{names[b]}" for a, b in zip(*np.nonzero(np.triu(found)))})


def mask_outline(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour of a binary mask's largest 8-connected region, along the pixel
    edges, in the coordinates above: ``(k, 2)`` float (x, y); None for an empty mask. A
    single pixel ``(row i, column j)`` gives the square ``(j, i)``..``(j + 1, i + 1)``, so the
    outline of a mask covers exactly its pixels (works in the mask's bounding box)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    # OpenCV traces pixel centres. On a 2x grid each pixel is a 2x2 block, and a corner of
    # the traced staircase lies on a block's first (even) or last (odd) pixel: pixel k of the
    # 2x grid at a corner stands for the edge ceil(k / 2) of the original grid
    big = cv2.resize(crop, (crop.shape[1] * 2, crop.shape[0] * 2),
                     interpolation=cv2.INTER_NEAREST)
    big = cv2.copyMakeBorder(big, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.int64) - 1
    return ((best + 1) // 2).astype(np.float64) + (x0, y0)

