"""Model proposals for annotators: predicted masks -> VIA polygons, the order in which a
person should review them, and what the annotators changed (no torch here: the inference is
:mod:`train.infer.propose`).

Coordinates: masks are ``(H, W)`` arrays indexed ``[y, x]``; polygons are in the COCO convention of
:mod:`converters.annotations.coco` (x right, y down, origin at the top-left corner of the top-left
pixel, so pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``); VIA stores them rounded to integers
(:mod:`converters.annotations.via`).

A mask becomes one polygon: the outer contour of its largest region, traced along the pixel edges
(:func:`converters.annotations.coco.mask_outline`), simplified (Douglas-Peucker, the tolerance
raised until) to at most ``max_points`` vertices (the study drew 15 per vertebra). Where that
crosses itself (a ragged mask, or two parts touching at a pixel corner), the largest part of the
outline is simplified by shapely's topology-preserving Douglas-Peucker instead: every polygon
written is simple, so convert reads it back as the one instance it was.

Endplates (:func:`snap_endplates`, ``measures.refine_predictions``): the polygons' endplates are
refined on the full-resolution image (:mod:`converters.spine.refine`) and their corners become
the polygons' vertices, so an annotator starts from the corners the measures would use.

Each proposed image carries, for the round trip, a file attribute ``spinepipe_proposal``
(compact JSON: the model and, per region, its id, class, level and vertices) and each region an
attribute ``proposal`` (its id). When the corrected project comes back, :func:`corrections`
compares every final region with the proposed one of the same id: moved points (the IoU of the
two polygons), regions added (no id, or an id seen before in the image) and deleted (an id
with no final region).

Review score (:func:`review`), highest first, and its reasons:

- ``3`` per missing or extra vertebra against five lumbar vertebrae and one sacrum (so an
  image with a wrong count always ranks above any image with the right one);
- ``0.5`` when the image has a fused blob (a semantic model's component over 1.6 times the
  median lumbar area of the image), one cut into its bodies (``measures.split_fused``,
  :mod:`converters.spine.fused`: the cut is a guess at where the disc lies, to be checked) or
  an overlapping pair of instances (degenerated discs, where proposals go wrong most);
- ``1 - lowest instance score`` (instance models; at most 1);
- ``1 - mean IoU with the other runs' instances`` (several runs given: disagreement between
  folds or models; at most 1);
- ``1`` when a segment shows what no lumbar segment does (:mod:`converters.spine.plausible`,
  after the endplates were refined on the image: an outline or an edge is wrong there, and its
  corners were not snapped).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from shapely.geometry import Polygon
from shapely.validation import make_valid

from converters.annotations.coco import flat, mask_outline, rasterize
from converters.core.errors import InvalidViaError
from converters.core.records import json_value
from converters.annotations.via import AnnotatedRegion
from converters.annotations.via_project import ProjectImage, ProjectRegion, polygon_region
from converters.spine.endplates import find_vertebrae
from converters.spine.levels import segment_order
from converters.spine.plausible import refined_spine, withhold_implausible
from converters.spine.refine import MeasuresConfig

LUMBAR_COUNT = 5
PROPOSAL_ATTRIBUTE = "spinepipe_proposal"   # file attribute: what was proposed
REGION_ID = "proposal"                      # region attribute: which proposal a region was
FUSED_FACTOR = 1.6


@dataclass
class ProposedRegion:
    """One proposed polygon."""

    cls: str
    xs: list[int]
    ys: list[int]
    score: float = 1.0
    level: str | None = None
    fused: bool = False       # a semantic component that looks like two vertebrae
    cut: bool = False         # one body of a fused blob, cut from it (cut_region)
    mask_iou: float = 1.0     # the polygon against the mask it came from


@dataclass
class Proposal:
    """The proposals of one image, its review score and the reasons."""

    filename: str
    size: int
    width: int
    height: int
    regions: list[ProposedRegion] = field(default_factory=list)
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    endplate_corners: int = 0     # polygon vertices moved onto refined endplate corners
    implausible: dict[str, str] = field(default_factory=dict)   # level -> why (not snapped)
    segments: list[str] = field(default_factory=list)   # those checks' failed pairs, "L5/S1"


# --------------------------------------------------------------------------------------------
# masks -> polygons


def _within(run, max_points: int) -> list:
    """``run(tolerance)`` with the smallest tolerance (doubling from 0.25 px, then bisected)
    that leaves at most ``max_points`` vertices."""
    lo, hi = 0.0, 0.25
    while len(run(hi)) > max_points and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(12):
        mid = (lo + hi) / 2
        if len(run(mid)) > max_points:
            lo = mid
        else:
            hi = mid
    return run(hi)


def simplify(points: np.ndarray, max_points: int) -> np.ndarray:
    """Douglas-Peucker (OpenCV) with the smallest tolerance that leaves at most
    ``max_points`` vertices."""
    if len(points) <= max_points:
        return points
    pts = points.astype(np.float32).reshape(-1, 1, 2)
    return _within(lambda eps: cv2.approxPolyDP(pts, eps, closed=True)[:, 0, :],
                   max_points).astype(np.float64)


def largest_part(geom) -> Polygon | None:
    """The largest polygon of a (repaired) geometry; None when nothing has area."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and g.area > 0]
    return max(parts, key=lambda g: g.area) if parts else None


def polygon_iou(ax: Sequence[float], ay: Sequence[float], bx: Sequence[float],
                by: Sequence[float]) -> float:
    """Area IoU of two polygons (self-intersections repaired; 0 when either has no area)."""
    a, b = (make_valid(Polygon(list(zip(x, y)))) if len(x) >= 3 else Polygon()
            for x, y in ((ax, ay), (bx, by)))
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union > 0 else 0.0


def _simple(xs: Sequence[int], ys: Sequence[int]) -> bool:
    return len(xs) >= 3 and Polygon(list(zip(xs, ys))).is_valid


def _valid_region(contour: np.ndarray, max_points: int) -> ProjectRegion:
    """A simple polygon of at most ``max_points`` vertices for a pixel outline whose
    Douglas-Peucker simplification crosses itself: the largest part of the repaired outline,
    simplified by shapely's topology-preserving Douglas-Peucker (a valid ring in, a valid ring
    out) with the smallest tolerance that leaves ``max_points`` vertices. A mask's outline has
    pixel corners for vertices, VIA's integers already, so rounding cannot make it cross; a
    piece cut from a fused blob (:func:`cut_region`) has fractional ones, and is checked again
    after rounding. No vertices (so no proposal) when even that is not a simple polygon of
    some area."""
    part = largest_part(make_valid(Polygon(contour)))
    if part is None:
        return polygon_region([])
    ring = Polygon(part.exterior)

    def run(tol: float) -> list:
        return list(ring.simplify(tol, preserve_topology=True).exterior.coords)[:-1]

    region = polygon_region(_within(run, max_points))
    simple = len(region.xs) <= max_points and _simple(region.xs, region.ys)
    return region if simple else polygon_region([])


def _simple_region(contour: np.ndarray, max_points: int) -> ProjectRegion:
    """An outline as VIA's integer polygon of at most ``max_points`` vertices: Douglas-Peucker,
    or where that (or a pinch between diagonal pixels) crossed the outline, which convert would
    repair but not as drawn, :func:`_valid_region`."""
    region = polygon_region(simplify(contour, max_points))
    if len(region.xs) >= 3 and not _simple(region.xs, region.ys):
        region = _valid_region(contour, max_points)
    return region


def cut_region(cls: str, piece: np.ndarray, score: float, max_points: int
               ) -> ProposedRegion | None:
    """The proposed polygon of one body cut from a fused blob (a float outline,
    :func:`converters.spine.fused.fused_pieces`): simplified and rounded as a mask's outline
    is (:func:`mask_polygon`), its ``mask_iou`` the polygon's IoU with the piece; None when
    nothing simple is left of it."""
    piece = np.asarray(piece, dtype=np.float64)
    region = _simple_region(piece, max_points)
    if len(region.xs) < 3:
        return None
    fit = polygon_iou(region.xs, region.ys, piece[:, 0], piece[:, 1])
    return ProposedRegion(cls, list(region.xs), list(region.ys), score, mask_iou=fit, cut=True)


def mask_polygon(mask: np.ndarray, max_points: int) -> tuple[list[int], list[int], float] | None:
    """VIA integer vertices of a mask's polygon and their IoU with the mask (pixel areas);
    None when the mask is empty or too thin to outline. Works in the mask's bounding box
    (a vertebra is a small part of a radiograph)."""
    contour = mask_outline(mask)
    if contour is None or len(contour) < 3:
        return None
    region = _simple_region(contour, max_points)
    if len(region.xs) < 3:
        return None
    x0, y0 = int(contour[:, 0].min()), int(contour[:, 1].min())
    x1, y1 = int(contour[:, 0].max()), int(contour[:, 1].max())
    x0, y0 = max(min(x0, *region.xs) - 1, 0), max(min(y0, *region.ys) - 1, 0)
    x1 = min(max(x1, *region.xs) + 1, mask.shape[1])
    y1 = min(max(y1, *region.ys) + 1, mask.shape[0])
    crop = mask[y0:y1, x0:x1].astype(bool)
    h, w = crop.shape
    drawn = rasterize(flat([x - x0 for x in region.xs], [y - y0 for y in region.ys]), h, w)
    drawn = drawn.astype(bool)
    union = int((drawn | crop).sum())
    return list(region.xs), list(region.ys), (int((drawn & crop).sum()) / union if union else 0.0)


def snap_endplates(regions: Sequence[ProposedRegion], image: np.ndarray | None,
                   cfg: MeasuresConfig, spacing_mm: tuple[float, float] | None = None, *,
                   implausible: dict[str, str] | None = None,
                   segments: list[str] | None = None) -> int:
    """The endplates of the proposed vertebrae refined on the full-resolution image
    (:mod:`converters.spine.refine`), their corners written into the polygons: each refined
    corner replaces the polygon's vertex nearest it (rounded, as VIA keeps them), unless that
    would make the polygon cross itself. Withheld endplates (not seen, or of a segment no spine
    shows: :mod:`converters.spine.plausible`), fused regions and levels given twice leave
    their polygons as drawn; ``implausible``, where given, receives the levels withheld as
    implausible, with the reason, and ``segments`` the pairs that failed (``"L5/S1"``).
    Returns the number of corners moved."""
    if image is None:
        return 0
    levels = [r.level for r in regions if r.level]
    by_level = {r.level: r for r in regions         # a level given twice: neither is refined
                if r.level and not r.fused and levels.count(r.level) == 1}
    prior = find_vertebrae([(lv, np.c_[r.xs, r.ys].astype(np.float64))
                            for lv, r in by_level.items()])
    spine = withhold_implausible(refined_spine(prior, image, cfg, spacing_mm), cfg, spacing_mm)
    if implausible is not None:
        implausible.update({lv: spine.unusable[lv] for lv in spine.withheld})
    if segments is not None:
        segments[:] = sorted({*segments, *spine.segments}, key=segment_order)
    moved = 0
    for lv, vt in spine.vertebrae.items():
        region = by_level[lv]
        xs, ys = list(region.xs), list(region.ys)
        for plate in (vt.superior, vt.inferior):
            if plate is None:
                continue
            for corner in (plate.posterior, plate.anterior):
                k = int(np.argmin(np.hypot(np.subtract(xs, corner[0]), np.subtract(ys, corner[1]))))
                x, y = int(round(corner[0])), int(round(corner[1]))
                trial_x, trial_y = xs[:k] + [x] + xs[k + 1:], ys[:k] + [y] + ys[k + 1:]
                if (x, y) != (xs[k], ys[k]) and _simple(trial_x, trial_y):
                    xs, ys = trial_x, trial_y
                    moved += 1
        region.xs, region.ys = xs, ys
    return moved


# --------------------------------------------------------------------------------------------
# the review order


def review(prop: Proposal, *, overlapping: list[str], disagreement: float | None,
           instance_model: bool) -> None:
    """Set ``prop.score`` and ``prop.reasons`` (module docstring)."""
    n_lumbar = sum(r.cls == "lumbar" for r in prop.regions)
    n_sacrum = sum(r.cls == "sacrum" for r in prop.regions)
    score, reasons = 0.0, []
    off = abs(n_lumbar - LUMBAR_COUNT) + abs(n_sacrum - 1)
    if off:
        score += 3.0 * off
        reasons.append(f"{n_lumbar} lumbar + {n_sacrum} sacrum (expected {LUMBAR_COUNT} + 1)")
    fused = [r.level or r.cls for r in prop.regions if r.fused]
    cut = [r.level or r.cls for r in prop.regions if r.cut]
    if fused or cut or overlapping:
        score += 0.5
        if fused:
            reasons.append("fused blob at " + ", ".join(fused))
        if cut:
            reasons.append("fused blob cut into " + ", ".join(cut))
        if overlapping:
            more = f" and {len(overlapping) - 4} more" if len(overlapping) > 4 else ""
            reasons.append("overlapping " + ", ".join(overlapping[:4]) + more)
    if instance_model and prop.regions:
        low = min(r.score for r in prop.regions)
        score += 1.0 - low
        if low < 0.7:
            reasons.append(f"lowest instance score {low:.2f}")
    if disagreement is not None:
        score += disagreement
        if disagreement > 0.1:
            reasons.append(f"runs disagree (mean IoU {1 - disagreement:.2f})")
    if prop.segments:
        score += 1.0
        reasons.append("a segment no spine shows at " + ", ".join(prop.segments))
    prop.score, prop.reasons = round(score, 4), reasons


def mark_fused(regions: list[ProposedRegion], areas: Sequence[float]) -> None:
    """Flag lumbar components larger than :data:`FUSED_FACTOR` x the image's median."""
    lumbar = [a for r, a in zip(regions, areas) if r.cls == "lumbar"]
    if len(lumbar) < 2:
        return
    median = float(np.median(lumbar))
    for r, a in zip(regions, areas):
        r.fused = r.cls == "lumbar" and a > FUSED_FACTOR * median


# --------------------------------------------------------------------------------------------
# VIA project and the round trip


def proposal_attributes() -> tuple[dict[str, dict], dict[str, dict]]:
    """The region and file attribute definitions a proposals project adds to VIA's."""
    text = {"type": "text", "default_value": ""}
    return ({"level": {**text, "description": "vertebra level (L1-L5, S1), bottom-up"},
             "source": {**text, "description": "model: proposed; empty: drawn by a person"},
             "score": {**text, "description": "the model's confidence"},
             REGION_ID: {**text, "description": "spinepipe: which proposal (do not edit)"}},
            {PROPOSAL_ATTRIBUTE: {**text, "description": "spinepipe: what the model "
                                  "proposed (do not edit)"}})


def via_images(proposals: Sequence[Proposal], *, class_attribute: str, model: str
               ) -> list[ProjectImage]:
    """The proposals as VIA images, in review order (highest score first)."""
    out = []
    for prop in sorted(proposals, key=lambda p: (-p.score, p.filename)):
        regions, record = [], []
        for k, r in enumerate(prop.regions, 1):
            rid = f"p{k}"
            regions.append(ProjectRegion(tuple(r.xs), tuple(r.ys), {
                class_attribute: r.cls, "level": r.level or "", "source": "model",
                "score": f"{r.score:.3f}", REGION_ID: rid}))
            record.append({"id": rid, "class": r.cls, "level": r.level or "",
                           "x": r.xs, "y": r.ys})
        payload = json.dumps({"model": model, "regions": record}, separators=(",", ":"))
        out.append(ProjectImage(prop.filename, prop.size, tuple(regions),
                            {PROPOSAL_ATTRIBUTE: payload}))
    return out


@dataclass(frozen=True)
class Proposed:
    """One proposed region as recorded in the project (read back)."""

    id: str
    cls: str
    level: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]


def read_proposal(value: str, file: str, image: str) -> list[Proposed]:
    """The ``spinepipe_proposal`` file attribute of an image (hostile: checked)."""
    try:
        data = json_value(value)  # nesting bounded: a deep value is a ValueError
        regions = data["regions"]
        out = []
        for r in regions:
            xs = tuple(float(v) for v in r["x"])
            ys = tuple(float(v) for v in r["y"])
            if len(xs) != len(ys) or not all(map(math.isfinite, xs + ys)):
                raise ValueError("vertex lists differ or are not finite")
            out.append(Proposed(str(r["id"]), str(r["class"]), str(r.get("level", "")), xs, ys))
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidViaError(f"file attribute {PROPOSAL_ATTRIBUTE} is not spinepipe's "
                              f"proposal record ({type(exc).__name__})", file=file,
                              image=image) from None


CORRECTION_FIELDS = ("file_name", "region", "proposal", "class", "level", "status", "iou")


def corrections(filename: str, proposed: list[Proposed], final: list[AnnotatedRegion],
                class_attribute: str) -> list[dict]:
    """Rows of ``correction.csv`` for one image (module docstring): ``status`` is
    ``unchanged`` (IoU >= 0.999), ``edited``, ``added`` or ``deleted``."""
    by_id = {p.id: p for p in proposed}
    seen: set[str] = set()
    rows = []
    for r in final:
        rid = r.attributes.get(REGION_ID, "")
        p = by_id.get(rid) if rid not in seen else None
        if p is None:
            rows.append({"file_name": filename, "region": r.index, "proposal": "",
                         "class": r.attributes.get(class_attribute, ""),
                         "level": r.attributes.get("level", ""), "status": "added", "iou": ""})
            continue
        seen.add(rid)
        iou = polygon_iou(p.xs, p.ys, r.xs, r.ys) if r.xs else 0.0
        rows.append({"file_name": filename, "region": r.index, "proposal": rid,
                     "class": r.attributes.get(class_attribute, p.cls), "level": p.level,
                     "status": "unchanged" if iou >= 0.999 else "edited",
                     "iou": f"{iou:.4f}"})
    for p in proposed:
        if p.id not in seen:
            rows.append({"file_name": filename, "region": "", "proposal": p.id, "class": p.cls,
                         "level": p.level, "status": "deleted", "iou": ""})
    return rows
