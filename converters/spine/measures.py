"""Clinical measures from vertebra outlines: endplates, lumbar lordosis, segmental angles,
disc and body heights, slip (anterolisthesis) and its Meyerding grade.

Input: one image's outlines with their levels (``L1``..``L5``, ``S1``;
:mod:`converters.spine.levels`), each a ``(k, 2)`` array of vertices in the COCO convention of
:mod:`converters.annotations.coco` (x right, y down, pixels, origin at the top-left corner of the
top-left pixel): an annotator's polygon or the outer contour of a predicted mask. Results are in
pixels, and in millimetres when the pixel spacing is known (DICOM Imager / Pixel Spacing, carried
by export's provenance).

Endplates (:func:`find_vertebrae`). The spine's caudal axis at each body runs through its
neighbours' centroids. An endplate is a side of the body's convex hull: of the hull edges whose
outward normal lies within :data:`NORMAL_WINDOW_DEG` of the axis (upwards for the superior
endplate, downwards for the inferior), the one whose supporting line the outline follows
longest (outline points within :data:`CONTACT_TOL` x body height of it) is the endplate; its
line is that supporting line (through the rims of a concave endplate, as a reader draws it),
its two corners the outline's extreme contact points projected onto the line. The sacrum's
upper (S1) endplate is found the same way, with the normal pointing from the hull edge towards
L5's centroid. The anterior side is where the lordotic curve bulges (the middle bodies'
centroids against the chord L1-S1) and where the sacrum does not extend (its centroid lies
posterior to its endplate's midpoint); both cues are added.

Measures (:func:`measure`), angles in degrees, positive lordotic:

- ``lordosis_deg``: the Cobb angle between the L1 superior and the S1 superior endplates;
- ``seg_Lk_Lk+1_deg``: between the superior endplates of two neighbours (L5-S1: L5 and S1), so
  the five segmental angles add up to the lordosis;
- ``disc_<pair>_{anterior,middle,posterior}``: from the upper body's inferior endplate to the
  lower body's superior endplate (corner to corner, midpoint to midpoint), along the normal of
  their mean direction; negative where the bodies overlap in projection (a collapsed disc);
- ``body_<level>_{anterior,posterior}``: corner to corner of the body's walls;
- ``slip_<pair>_pct``: the upper body's posterior-inferior corner against the lower body's
  posterior-superior corner along the lower's superior endplate, in % of that endplate's
  length (Taillard / Meyerding; positive anterior, negative a retrolisthesis);
  ``meyerding_<pair>``: 0 below :data:`SLIP_MIN_PCT` %, then I (to 25 %), II (50), III (75),
  IV (100), V (spondyloptosis).

Never guessed: a measure needs every level it uses; a level is missing, given twice, a fused
blob (taller than :data:`FUSED_FACTOR` x the median body), or above a gap where a vertebra seems
missing (a centroid step over :data:`GAP_FACTOR` x the median step: the levels above are
uncertain), and every measure that uses it is left empty, with the reason recorded per level.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import cv2
import numpy as np

from converters.spine.levels import LEVELS, LUMBAR

NORMAL_WINDOW_DEG = 60.0
CONTACT_TOL = 0.05          # of the body height (at least 1 px)
FUSED_FACTOR = 1.6
GAP_FACTOR = 1.6
SLIP_MIN_PCT = 5.0

PAIRS = tuple(zip(LEVELS[:-1], LEVELS[1:]))      # (L1, L2) ... (L5, S1)


def _pair(a: str, b: str) -> str:
    return f"{a}_{b}"


def _columns() -> tuple[list[str], list[str]]:
    """(every measure column, the length columns among them)"""
    cols, lengths = ["lordosis_deg"], []
    cols += [f"seg_{_pair(a, b)}_deg" for a, b in PAIRS]
    for unit in ("px", "mm"):
        for a, b in PAIRS:
            lengths += [f"disc_{_pair(a, b)}_{side}_{unit}"
                        for side in ("anterior", "middle", "posterior")]
        for lv in LUMBAR:
            lengths += [f"body_{lv}_{side}_{unit}" for side in ("anterior", "posterior")]
    cols += lengths
    cols += [f"slip_{_pair(a, b)}_pct" for a, b in PAIRS]
    cols += [f"meyerding_{_pair(a, b)}" for a, b in PAIRS]
    return cols, lengths


MEASURES, LENGTHS = _columns()
#: the columns of ``measures.csv``
COLUMNS = ("file_name", *MEASURES, "pixel_spacing_mm", "not_measurable")


def uses(column: str) -> tuple[str, ...]:
    """The levels a measure column needs."""
    if column == "lordosis_deg":
        return ("L1", "S1")
    parts = column.split("_")
    return tuple(p for p in parts[1:3] if p in LEVELS)


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
    and why levels are not usable (level -> reason)."""

    vertebrae: dict[str, Vertebra] = field(default_factory=dict)
    anterior: np.ndarray | None = None
    up: np.ndarray | None = None
    unusable: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# endplates


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


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
        n = _unit(np.array([d[1], -d[0]]))
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
        want = _unit(target_point - (p + q) / 2) if target_point is not None else toward
        if float(np.dot(n, want)) < cos_win:
            continue
        d = _unit(q - p)
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
    return _unit(below - above)


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
    chord = _unit(cent[bottom] - cent[top])
    if "S1" in raw:
        chord = _unit(np.mean(raw["S1"][0], axis=0) - cent[top]) if top != "S1" else chord
    perp = np.array([-chord[1], chord[0]])
    cue = 0.0
    middle = [lv for lv in order if lv not in (top, bottom)]
    if middle:
        depth = np.mean([np.linalg.norm(e[0] - e[1]) for v in raw.values() for e in v])
        cue += float(np.mean([(cent[lv] - cent[top]) @ perp for lv in middle]) / depth)
    if "S1" in raw:
        a, b = raw["S1"][0]
        e = _unit(b - a)
        off = (cent["S1"] - (a + b) / 2) @ e / float(np.linalg.norm(b - a))
        cue += float(-off * np.sign(e @ perp))
    if abs(cue) < 1e-3:
        for lv in raw:
            spine.unusable.setdefault(lv, "anterior side not determined")
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


# --------------------------------------------------------------------------------------------
# measures


def _angle(plate: Endplate, spine: Spine) -> float:
    """The endplate's tilt in degrees in the spine's frame (anterior end up: positive)."""
    v = plate.vector
    return math.degrees(math.atan2(float(v @ spine.up), float(v @ spine.anterior)))


def meyerding(slip_pct: float) -> int:
    """Meyerding grade of a slip in % (module docstring)."""
    if slip_pct < SLIP_MIN_PCT:
        return 0
    return min(5, int(math.ceil(slip_pct / 25.0)) if slip_pct <= 100 else 5)


def _core(spine: Spine) -> dict[str, float | int | None]:
    """Angles, slips and the lengths (``*_px`` keys, in the spine's own units)."""
    out: dict[str, float | int | None] = {c: None for c in MEASURES}
    v = spine.vertebrae
    if spine.anterior is None:
        return out
    if "L1" in v and "S1" in v:
        out["lordosis_deg"] = _angle(v["L1"].superior, spine) - _angle(v["S1"].superior, spine)
    for a, b in PAIRS:
        key = _pair(a, b)
        if a not in v or b not in v:
            continue
        out[f"seg_{key}_deg"] = _angle(v[a].superior, spine) - _angle(v[b].superior, spine)
        upper, lower = v[a].inferior, v[b].superior
        mean_dir = _unit(_unit(upper.vector) + _unit(lower.vector))
        normal = np.array([-mean_dir[1], mean_dir[0]])
        if normal @ spine.up < 0:
            normal = -normal
        for side, pu, pl in (("anterior", upper.anterior, lower.anterior),
                             ("middle", upper.midpoint, lower.midpoint),
                             ("posterior", upper.posterior, lower.posterior)):
            out[f"disc_{key}_{side}_px"] = float((np.asarray(pu) - np.asarray(pl)) @ normal)
        e = lower.vector
        length = float(np.linalg.norm(e))
        slip = float((np.asarray(upper.posterior) - np.asarray(lower.posterior)) @ e
                     / length / length * 100.0)
        out[f"slip_{key}_pct"] = slip
        out[f"meyerding_{key}"] = meyerding(slip)
    for lv in LUMBAR:
        if lv in v:
            sup, inf = v[lv].superior, v[lv].inferior
            out[f"body_{lv}_anterior_px"] = float(np.linalg.norm(np.subtract(sup.anterior,
                                                                               inf.anterior)))
            out[f"body_{lv}_posterior_px"] = float(np.linalg.norm(np.subtract(sup.posterior,
                                                                                inf.posterior)))
    return out


def _scaled(spine: Spine, spacing: tuple[float, float]) -> Spine:
    """The spine in millimetres: x times the column spacing, y times the row spacing (the
    frame re-made perpendicular, so angles are physical ones when pixels are not square)."""
    s = np.array([spacing[1], spacing[0]])

    def pt(p) -> tuple[float, float]:
        return (float(p[0] * s[0]), float(p[1] * s[1]))

    out = Spine(unusable=dict(spine.unusable))
    for lv, vt in spine.vertebrae.items():
        out.vertebrae[lv] = Vertebra(lv, Endplate(pt(vt.superior.posterior), pt(vt.superior.anterior)),
                                     None if vt.inferior is None else
                                     Endplate(pt(vt.inferior.posterior), pt(vt.inferior.anterior)))
    if spine.anterior is not None:
        out.up = _unit(spine.up * s)
        perp = np.array([-out.up[1], out.up[0]])
        out.anterior = perp if perp @ (spine.anterior * s) > 0 else -perp
    return out


def measure(spine: Spine, spacing_mm: tuple[float, float] | None = None
            ) -> dict[str, float | int | None]:
    """Every column of :data:`MEASURES` for one image (None: not measurable). With the pixel
    spacing (row, column) in mm, lengths in mm too, and angles and slips computed in
    physical space (the same as in pixels when pixels are square)."""
    out = _core(spine)
    if spacing_mm:
        phys = _core(_scaled(spine, spacing_mm))
        for col in MEASURES:
            if col.endswith("_mm"):
                out[col] = phys[col[:-3] + "_px"]
            elif not col.endswith("_px"):
                out[col] = phys[col]
    return out


def reasons(spine: Spine) -> str:
    """The ``not_measurable`` cell: why levels were not usable, ``L4: missing; ...``."""
    return "; ".join(f"{lv}: {why}" for lv, why in sorted(spine.unusable.items(),
                                                         key=lambda kv: LEVELS.index(kv[0])))


def image_measures(outlines: Sequence[tuple[str | None, np.ndarray]],
                   spacing_mm: tuple[float, float] | None = None) -> tuple[dict, Spine]:
    """One image's measures row (:data:`COLUMNS` but ``file_name``) and the endplates."""
    spine = find_vertebrae(outlines)
    row = measure(spine, spacing_mm)
    row["pixel_spacing_mm"] = None if spacing_mm is None else float(spacing_mm[0])
    row["not_measurable"] = reasons(spine)
    return row, spine


def measures_from_endplates(endplates: dict[str, dict[str, Sequence[Sequence[float]]]],
                            spacing_mm: tuple[float, float] | None = None) -> dict:
    """Measures from known corners (the phantom's truth): ``{level: {"superior": [posterior,
    anterior], "inferior": [...]}}``; the frame from the L1 and S1 endplates."""
    spine = Spine()
    for lv, sides in endplates.items():
        sup = Endplate(*(tuple(map(float, p)) for p in sides["superior"]))
        inf = (Endplate(*(tuple(map(float, p)) for p in sides["inferior"]))
               if sides.get("inferior") else None)
        spine.vertebrae[lv] = Vertebra(lv, sup, inf)
    top = spine.vertebrae[min(spine.vertebrae, key=LEVELS.index)]
    bottom = spine.vertebrae[max(spine.vertebrae, key=LEVELS.index)]
    chord = _unit(bottom.superior.midpoint - top.superior.midpoint)
    spine.up = -chord
    ant = _unit(np.mean([vt.superior.vector for vt in spine.vertebrae.values()], axis=0))
    perp = np.array([-chord[1], chord[0]])
    spine.anterior = perp if ant @ perp > 0 else -perp
    return measure(spine, spacing_mm)


def measures_csv(rows: Sequence[dict]) -> str:
    """``measures.csv`` text: :data:`COLUMNS`, empty cells where a measure could not be
    made, floats to 4 decimals."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()
