"""Clinical measures from vertebra outlines (through their endplates): lumbar lordosis, segmental
angles, disc and body heights, slip (anterolisthesis) and its Meyerding grade.

Input: one image's outlines with their levels (``L1``..``L5``, ``S1``;
:mod:`converters.spine.levels`), each a ``(k, 2)`` array of vertices in the COCO convention of
:mod:`converters.annotations.coco` (x right, y down, pixels, origin at the top-left corner of the
top-left pixel): an annotator's polygon or the outer contour of a predicted mask. Results are in
pixels, and in millimetres when the pixel spacing is known (DICOM Imager / Pixel Spacing, carried
by export's provenance).

Endplates: :func:`converters.spine.endplates.find_vertebrae` (how they are found, and when a
level is unusable); optionally refined on the full-resolution image
(:mod:`converters.spine.refine`: a level whose endplate is not seen there is withheld, with the
reason).

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
blob (taller than :data:`~converters.spine.endplates.FUSED_FACTOR` x the median body), or above a
gap where a vertebra seems missing (a centroid step over
:data:`~converters.spine.endplates.GAP_FACTOR` x the median step: the levels above are
uncertain), or one of a pair no lumbar segment shows (:mod:`converters.spine.plausible`: a
segmental angle beyond ``measures.max_segment_deg``, a disc not seen), and every measure that
uses it is left empty, with the reason recorded per level.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from converters.core.errors import InvalidTableError, MissingInputError
from converters.core.records import open_input
from converters.spine.endplates import (Endplate, Spine, Vertebra, disc_heights, scaled,
                                        find_vertebrae, tilt_deg, unit_vector)
from converters.spine.levels import LEVELS, LUMBAR
from converters.spine.plausible import refined_spine, withhold_implausible
from converters.spine.refine import MeasuresConfig, confidence

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
#: the columns of ``measures.csv``: ``refined`` 1 where the endplates were refined on the image
#: (:mod:`converters.spine.refine`), ``confidence`` then the lowest of its refined endplates'
COLUMNS = ("file_name", *MEASURES, "refined", "confidence", "pixel_spacing_mm", "not_measurable")


def uses(column: str) -> tuple[str, ...]:
    """The levels a measure column needs, read from its name: columns are named
    ``<kind>_<level>[_<level>]_<rest>`` (``seg_L4_L5_deg``, ``body_L3_anterior_mm``), so a new
    measure named that way needs no entry here (``lordosis_deg`` is the one exception)."""
    if column == "lordosis_deg":
        return ("L1", "S1")
    parts = column.split("_")
    return tuple(p for p in parts[1:3] if p in LEVELS)


# --------------------------------------------------------------------------------------------
# measures


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
        out["lordosis_deg"] = tilt_deg(v["L1"].superior, spine) - tilt_deg(v["S1"].superior, spine)
    for a, b in PAIRS:
        key = _pair(a, b)
        if a not in v or b not in v:
            continue
        out[f"seg_{key}_deg"] = tilt_deg(v[a].superior, spine) - tilt_deg(v[b].superior, spine)
        upper, lower = v[a].inferior, v[b].superior
        for side, height in disc_heights(upper, lower, spine.up).items():
            out[f"disc_{key}_{side}_px"] = height
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


def measure(spine: Spine, spacing_mm: tuple[float, float] | None = None
            ) -> dict[str, float | int | None]:
    """Every column of :data:`MEASURES` for one image (None: not measurable). With the pixel
    spacing (row, column) in mm, lengths in mm too, and angles and slips computed in
    physical space (the same as in pixels when pixels are square)."""
    out = _core(spine)
    if spacing_mm:
        phys = _core(scaled(spine, spacing_mm))
        for col in MEASURES:
            if col.endswith("_mm"):
                out[col] = phys[col[:-3] + "_px"]
            elif not col.endswith("_px"):
                out[col] = phys[col]
    return out


def reasons(spine: Spine) -> str:
    """The ``not_measurable`` cell: why levels were not usable, ``L4: missing; ...``."""
    # (a level's reason never holds the separator: readers split the cell on it)
    return "; ".join(f"{lv}: {why.replace(';', ',')}"
                     for lv, why in sorted(spine.unusable.items(),
                                           key=lambda kv: LEVELS.index(kv[0])))


def image_measures(outlines: Sequence[tuple[str | None, np.ndarray]],
                   spacing_mm: tuple[float, float] | None = None, *,
                   refine: MeasuresConfig | None = None, image: np.ndarray | None = None,
                   image_name: str = "the image",
                   checks: MeasuresConfig | None = None) -> tuple[dict, Spine]:
    """One image's measures row (:data:`COLUMNS` but ``file_name``) and the endplates; with
    ``refine``, the endplates refined on ``image`` first, with a second look at a disc not
    seen (None: the image is missing, and nothing is measured,
    :func:`converters.spine.plausible.refined_spine`); then the implausible
    pairs withheld (:mod:`converters.spine.plausible`, its limits from ``checks``, else
    ``refine``, else the defaults)."""
    spine = find_vertebrae(outlines)
    if refine is not None:
        spine = refined_spine(spine, image, refine, spacing_mm, image_name=image_name)
    spine = withhold_implausible(spine, checks or refine or MeasuresConfig(), spacing_mm)
    row = measure(spine, spacing_mm)
    row["refined"] = int(refine is not None and image is not None)
    row["confidence"] = confidence(spine)
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
    chord = unit_vector(bottom.superior.midpoint - top.superior.midpoint)
    spine.up = -chord
    ant = unit_vector(np.mean([vt.superior.vector for vt in spine.vertebrae.values()], axis=0))
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


def read_measures(path: str | Path) -> list[dict[str, str]]:
    """A ``measures.csv``'s rows as strings, every measure a finite number or empty, each image
    once; else a one-line :class:`InvalidTableError` naming the file, image and column (a
    column of :data:`MEASURES` missing, a row with more or fewer cells than the header, an
    image listed twice), :class:`MissingInputError` when the file is not there. Columns after
    ``MEASURES`` that older files lack (``refined``, ``confidence``) read as empty."""
    path = Path(path)
    try:
        with open_input(path, "r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in ("file_name", *MEASURES) if c not in header]
            if missing:
                raise InvalidTableError(f"no {missing[0]} column: not a measures.csv of this "
                                        "spinepipe", file=path)
            raw = list(reader)
    except FileNotFoundError:
        raise MissingInputError("measures not found", produced_by="evaluate",
                                file=path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidTableError(f"unreadable: {exc}".splitlines()[0], file=path) from None
    rows, seen = [], set()
    for n, row in enumerate(raw, 2):
        name = (row.get("file_name") or "")[:200]
        if None in row or None in row.values():   # DictReader's marks of a cut or long row
            raise InvalidTableError(f"line {n} has {'more' if None in row else 'fewer'} cells "
                                    "than the header", file=path, image=name)
        if name in seen:
            raise InvalidTableError("image listed twice", file=path, image=name)
        seen.add(name)
        rows.append({k: row.get(k, "") for k in COLUMNS})
    for row in rows:
        for col in (*MEASURES, "pixel_spacing_mm"):
            value = row[col]
            if value == "":
                continue
            try:
                ok = math.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok or (col == "pixel_spacing_mm" and float(value) <= 0):
                kind = "positive number" if col == "pixel_spacing_mm" else "number"
                raise InvalidTableError(f"column {col} is not a {kind}: {value[:40]!r}",
                                        file=path, image=row["file_name"][:200])
    return rows
