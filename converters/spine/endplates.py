"""Endplates from vertebra outlines (:func:`find_vertebrae`): the geometry the clinical measures
(:mod:`converters.spine.measures`) are read from.

Input: one image's outlines with their levels (``L1``..``L5``, ``S1``;
:mod:`converters.spine.levels`), each a ``(k, 2)`` array of vertices in the COCO convention of
:mod:`converters.annotations.coco` (x right, y down, pixels, origin at the top-left corner of the
top-left pixel).

The spine's caudal axis at each body runs through its neighbours' centroids. An endplate is a
side of the body's convex hull: of the hull edges whose outward normal lies within
:data:`NORMAL_WINDOW_DEG` of the axis (upwards for the superior endplate, downwards for the
inferior), the one whose supporting line the outline follows longest (outline points within
:data:`CONTACT_TOL` x body height of it) is the endplate; its line is that supporting line
(through the rims of a concave endplate, as a reader draws it), its two corners the outline's
extreme contact points projected onto the line. The sacrum's upper (S1) endplate is found the
same way, with the normal pointing from the hull edge towards L5's centroid. The anterior side
is where the lordotic curve bulges (the middle bodies' centroids against the chord L1-S1) and
where the sacrum does not extend (its centroid lies posterior to its endplate's midpoint); both
cues are added. When they point to opposite sides and the stronger does not outweigh the other
:data:`CUE_DOMINANCE` times, the side is not guessed: a frame turned the wrong way reads a
lordosis of 23 deg as a kyphosis of 25 (a model's sacrum mask grown over L5 did that).

Never guessed: a level is unusable when it is missing, given twice, a fused blob (taller than
:data:`FUSED_FACTOR` x the median body), or above a gap where a vertebra seems missing (a
centroid step over :data:`GAP_FACTOR` x the median step: the levels above are uncertain); the
reason is recorded per level (:attr:`Spine.unusable`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import cv2
import numpy as np

from converters.spine.levels import LEVELS


NORMAL_WINDOW_DEG = 60.0


CONTACT_TOL = 0.05          # of the body height (at least 1 px)


FUSED_FACTOR = 1.6


GAP_FACTOR = 1.6


CUE_DOMINANCE = 2.0         # a cue against the other must be outweighed this many times


@dataclass(frozen=True)
class Endplate:
    """One endplate: its posterior and anterior corner, (x, y) pixels."""

    posterior: tuple[float, float]
    anterior: tuple[float, float]

    @property
    def vector(self) -> np.ndarray:
        """posterior -> anterior"""
        return np.subtract(self.anterior, self.posterior)

    @property
    def midpoint(self) -> np.ndarray:
        return (np.asarray(self.posterior) + np.asarray(self.anterior)) / 2


@dataclass(frozen=True)
class Vertebra:
    level: str
    superior: Endplate
    inferior: Endplate | None = None     # the sacrum has none here


@dataclass
class Spine:
    """The endplates found in one image, the anterior and cranial unit vectors of its frame,
    and why levels are not usable (level -> reason); ``fits``: where the endplates were refined
    on the image (:mod:`converters.spine.refine`), level -> side -> its fit; ``withheld``: the
    levels measured but withheld as implausible (:mod:`converters.spine.plausible`), their
    endplates as they were found; ``segments``: the segments those checks found no spine shows,
    cranial first (``"L5/S1"``; ``"L4/S1"`` across a missing L5)."""

    vertebrae: dict[str, Vertebra] = field(default_factory=dict)
    anterior: np.ndarray | None = None
    up: np.ndarray | None = None
    unusable: dict[str, str] = field(default_factory=dict)
    fits: dict[str, dict] = field(default_factory=dict)
    withheld: dict[str, Vertebra] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)


def unit_vector(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def tilt_deg(plate: Endplate, spine: Spine) -> float:
    """An endplate's tilt in degrees in the spine's frame (anterior end up: positive)."""
    v = plate.vector
    return math.degrees(math.atan2(float(v @ spine.up), float(v @ spine.anterior)))


def disc_heights(upper: Endplate, lower: Endplate, up: np.ndarray) -> dict[str, float]:
    """The disc between the upper body's inferior endplate and the lower body's superior one:
    ``anterior``, ``middle`` and ``posterior`` heights (corner to corner, midpoint to midpoint)
    along the normal of their mean direction, in the endplates' units; negative where the
    bodies overlap in projection. ``up``: the spine's cranial unit vector."""
    mean_dir = unit_vector(unit_vector(upper.vector) + unit_vector(lower.vector))
    normal = np.array([-mean_dir[1], mean_dir[0]])
    if normal @ up < 0:
        normal = -normal
    return {side: float((np.asarray(pu) - np.asarray(pl)) @ normal)
            for side, pu, pl in (("anterior", upper.anterior, lower.anterior),
                                 ("middle", upper.midpoint, lower.midpoint),
                                 ("posterior", upper.posterior, lower.posterior))}


def scaled(spine: Spine, spacing: tuple[float, float]) -> Spine:
    """The spine in millimetres: x times the column spacing, y times the row spacing (the
    frame re-made perpendicular, so angles are physical ones when pixels are not square); an
    endplate that is None stays None."""
    s = np.array([spacing[1], spacing[0]])

    def pt(p) -> tuple[float, float]:
        return (float(p[0] * s[0]), float(p[1] * s[1]))

    def plate(e: Endplate | None) -> Endplate | None:
        return None if e is None else Endplate(pt(e.posterior), pt(e.anterior))

    out = Spine(unusable=dict(spine.unusable))
    for lv, vt in spine.vertebrae.items():
        out.vertebrae[lv] = Vertebra(lv, plate(vt.superior), plate(vt.inferior))
    if spine.anterior is not None:
        out.up = unit_vector(spine.up * s)
        perp = np.array([-out.up[1], out.up[0]])
        out.anterior = perp if perp @ (spine.anterior * s) > 0 else -perp
    return out


def _centroid(points: np.ndarray) -> np.ndarray:
    m = cv2.moments(points.astype(np.float32))
    if abs(m["m00"]) < 1e-9:
        return points.mean(axis=0)
    return np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]])


def _hull_edges(points: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(start, end, outward unit normal) of each convex hull edge."""
    hull = cv2.convexHull(points.astype(np.float32), clockwise=False)[:, 0, :].astype(np.float64)
    center = hull.mean(axis=0)
    edges = []
    for i in range(len(hull)):
        p, q = hull[i], hull[(i + 1) % len(hull)]
        d = q - p
        if not d.any():
            continue
        n = unit_vector(np.array([d[1], -d[0]]))
        if np.dot(n, (p + q) / 2 - center) < 0:
            n = -n
        edges.append((p, q, n))
    return edges


def endplate_line(points: np.ndarray, toward: np.ndarray | None, tol: float, *,
                  target_point: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The two corners (unordered) of the endplate of ``points`` facing ``toward`` (a unit
    vector) or, with ``target_point``, facing that point; None when no hull edge qualifies
    (module docstring)."""
    cos_win = math.cos(math.radians(NORMAL_WINDOW_DEG))
    best, best_extent = None, 0.0
    for p, q, n in _hull_edges(points):
        want = unit_vector(target_point - (p + q) / 2) if target_point is not None else toward
        if float(np.dot(n, want)) < cos_win:
            continue
        d = unit_vector(q - p)
        dist = (points - p) @ n                       # <= 0 inside, 0 on the line
        contact = points[dist > -tol]
        along = (contact - p) @ d
        extent = float(along.max() - along.min())
        if extent > best_extent:
            lo, hi = float(along.min()), float(along.max())
            best, best_extent = (p + lo * d, p + hi * d), extent
    return best


def _axis_extent(points: np.ndarray, axis: np.ndarray) -> float:
    proj = points @ axis
    return float(proj.max() - proj.min())


def find_vertebrae(outlines: Iterable[tuple[str | None, np.ndarray]]) -> Spine:
    """The endplates of every usable level of one image (module docstring)."""
    spine = Spine()
    outline = _usable_outlines(outlines, spine)
    if len(outline) < 2:
        return spine
    cent = {lv: _centroid(p) for lv, p in outline.items()}
    order = [lv for lv in LEVELS if lv in cent]          # cranial to caudal
    lumbar = [lv for lv in order if lv != "S1"]
    heights = {lv: _axis_extent(outline[lv], _axis_at(lv, order, cent)) for lv in lumbar}
    _mark_uncertain(spine, lumbar, heights, cent)
    raw = _endplate_lines(spine, outline, order, cent, heights)
    if raw:
        _orient(spine, raw, order, cent)
    return spine


def _usable_outlines(outlines: Iterable[tuple[str | None, np.ndarray]],
                     spine: Spine) -> dict[str, np.ndarray]:
    """Level -> its one outline; a level missing, given twice or with fewer than 3 points is
    recorded as unusable."""
    by_level: dict[str, list[np.ndarray]] = {}
    for level, pts in outlines:
        if level in LEVELS:
            by_level.setdefault(level, []).append(np.asarray(pts, dtype=np.float64).reshape(-1, 2))
    for lv in LEVELS:
        if lv not in by_level:
            spine.unusable[lv] = "missing"
        elif len(by_level[lv]) > 1:
            spine.unusable[lv] = f"given {len(by_level[lv])} times"
        elif len(by_level[lv][0]) < 3:
            spine.unusable[lv] = "fewer than 3 points"
    return {lv: by_level[lv][0] for lv in LEVELS if lv not in spine.unusable}


def _axis_at(lv: str, order: list[str], cent: dict[str, np.ndarray]) -> np.ndarray:
    """Caudal unit vector at a lumbar level, from its lumbar neighbours' centroids (the
    sacrum's centroid lies posterior of the axis); a lone lumbar body: towards S1."""
    lum = [x for x in order if x != "S1"]
    i = lum.index(lv)
    above = cent[lum[i - 1]] if i > 0 else cent[lv]
    below = cent[lum[i + 1]] if i + 1 < len(lum) else cent[lv]
    if len(lum) == 1:
        below = cent["S1"]
    return unit_vector(below - above)


def _mark_uncertain(spine: Spine, lumbar: list[str], heights: dict[str, float],
                    cent: dict[str, np.ndarray]) -> None:
    """A fused blob or a gap makes the count uncertain: it and every level above it are
    unusable."""
    miscounted: list[str] = []
    if len(heights) >= 3:
        med = float(np.median(list(heights.values())))
        for lv in lumbar:
            if heights[lv] > FUSED_FACTOR * med:
                spine.unusable[lv] = "fused blob (taller than two bodies' worth)"
                miscounted.append(lv)
    steps = [(a, b, float(np.linalg.norm(cent[a] - cent[b])))
             for a, b in zip(lumbar, lumbar[1:]) if LEVELS.index(b) - LEVELS.index(a) == 1]
    if len(steps) >= 2:
        med = float(np.median([s for *_, s in steps]))
        for a, b, s in steps:
            if s > GAP_FACTOR * med and a not in spine.unusable:
                spine.unusable[a] = f"a vertebra seems missing between {a} and {b}"
                miscounted.append(a)
    worst = max((LEVELS.index(lv) for lv in miscounted), default=-1)
    for lv in LEVELS[:max(worst, 0)]:
        spine.unusable.setdefault(lv, f"above an uncertain level ({LEVELS[worst]})")


def _endplate_lines(spine: Spine, outline: dict[str, np.ndarray], order: list[str],
                    cent: dict[str, np.ndarray], heights: dict[str, float]
                    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Level -> its endplate lines (cranial, caudal; S1: its upper endplate only), unoriented;
    a level without them is recorded as unusable."""
    raw: dict[str, list] = {}
    for lv in order:
        if lv in spine.unusable:
            continue
        pts = outline[lv]
        if lv == "S1":
            target = cent[order[order.index("S1") - 1]]      # L5 (or the lowest present)
            tol = max(1.0, CONTACT_TOL * float(np.median(list(heights.values()) or [0])))
            raw[lv] = [endplate_line(pts, None, tol, target_point=target)]
        else:
            ax = _axis_at(lv, order, cent)
            tol = max(1.0, CONTACT_TOL * heights[lv])
            raw[lv] = [endplate_line(pts, -ax, tol), endplate_line(pts, ax, tol)]
        if any(e is None for e in raw[lv]):
            spine.unusable[lv] = "no endplate found"
            del raw[lv]
    return raw


def _orient(spine: Spine, raw: dict[str, list[tuple[np.ndarray, np.ndarray]]],
            order: list[str], cent: dict[str, np.ndarray]) -> None:
    """The frame (up: against the chord from the top to the bottom of the spine; anterior:
    the side the lordosis bulges to, and the sacrum's body lies behind its endplate's
    middle), then each endplate as (posterior, anterior) corner."""
    top, bottom = order[0], order[-1]
    chord = unit_vector(cent[bottom] - cent[top])
    if "S1" in raw:
        chord = unit_vector(np.mean(raw["S1"][0], axis=0) - cent[top]) if top != "S1" else chord
    perp = np.array([-chord[1], chord[0]])
    bulge = sacrum = 0.0
    middle = [lv for lv in order if lv not in (top, bottom)]
    if middle:
        depth = np.mean([np.linalg.norm(e[0] - e[1]) for v in raw.values() for e in v])
        bulge = float(np.mean([(cent[lv] - cent[top]) @ perp for lv in middle]) / depth)
    if "S1" in raw:
        a, b = raw["S1"][0]
        e = unit_vector(b - a)
        off = (cent["S1"] - (a + b) / 2) @ e / float(np.linalg.norm(b - a))
        sacrum = float(-off * np.sign(e @ perp))
    cue = bulge + sacrum
    why = ""
    if abs(cue) < 1e-3:
        why = "anterior side not determined"
    elif bulge * sacrum < 0 and CUE_DOMINANCE * min(abs(bulge), abs(sacrum)) > \
            max(abs(bulge), abs(sacrum)):
        why = "anterior side uncertain (the curve and the sacrum point to opposite sides)"
    if why:
        for lv in raw:
            spine.unusable.setdefault(lv, why)
        return
    spine.anterior = perp if cue > 0 else -perp
    spine.up = -chord
    for lv, ends in raw.items():
        plates = []
        for a, b in ends:
            post, ant = (a, b) if (b - a) @ spine.anterior > 0 else (b, a)
            plates.append(Endplate((float(post[0]), float(post[1])),
                                   (float(ant[0]), float(ant[1]))))
        spine.vertebrae[lv] = Vertebra(lv, plates[0], plates[1] if len(plates) > 1 else None)
