"""Clinical measures of a model's predictions against the ground truth's (evaluate's part of
:mod:`converters.spine.measures`): per test image the measures of both, then per measure the
agreement (Bland-Altman): mean absolute error, bias (mean of prediction - truth), the 95 % limits
of agreement (bias -/+ 1.96 SD of the differences), and the measurable rate.

Outlines: ground truth from the test set's polygons; predictions from each kept instance's mask
(instance models) or connected component (semantic models: a fused pair is cut into its bodies,
``measures.split_fused``, :mod:`converters.spine.fused`; one not cut stays one blob, which
:func:`converters.spine.endplates.find_vertebrae` then refuses to measure), traced along the pixel
edges (:func:`converters.annotations.coco.mask_outline`). Levels as evaluate assigns them (after
the cut: again, bottom-up).

Rates: a measure's ``measurable_rate`` is the share of the test images measurable on the
ground truth where the prediction gives it too; an image is *measurable* when every measure
the ground truth gives, the prediction gives too; the model's ``measurable_rate`` is the share
of such images. Errors are computed over the images where both give the measure. Meyerding
grades are compared as ``grade_agreement`` (share of equal grades).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from converters.spine.measures import MEASURES

#: the summary's headline measures: name -> the columns pooled into it
GROUPS = {
    "lordosis_deg": ["lordosis_deg"],
    "segmental_deg": [c for c in MEASURES if c.startswith("seg_")],
    "disc_height_mm": [c for c in MEASURES if c.startswith("disc_") and c.endswith("_mm")],
    "body_height_mm": [c for c in MEASURES if c.startswith("body_") and c.endswith("_mm")],
    "disc_height_px": [c for c in MEASURES if c.startswith("disc_") and c.endswith("_px")],
    "body_height_px": [c for c in MEASURES if c.startswith("body_") and c.endswith("_px")],
    "slip_pct": [c for c in MEASURES if c.startswith("slip_")],
}


def _value(row: dict, col: str) -> float | None:
    v = row.get(col)
    if v in (None, ""):
        return None
    return float(v)


def agreement(pred: Sequence[dict], truth: Sequence[dict], columns: Sequence[str]) -> dict:
    """Bland-Altman statistics of the pooled columns over paired rows (same order): ``n``
    (pairs), ``mae``, ``bias``, ``sd``, ``loa_low``, ``loa_high``, ``measurable_rate`` (of the
    values the truth gives); None where there is nothing to compute (one pair has no spread:
    ``sd`` and the limits need two)."""
    diffs, given, made = [], 0, 0
    for p, t in zip(pred, truth):
        for col in columns:
            tv = _value(t, col)
            if tv is None:
                continue
            given += 1
            pv = _value(p, col)
            if pv is None:
                continue
            made += 1
            diffs.append(pv - tv)
    d = np.asarray(diffs, dtype=np.float64)
    out = {"n": int(d.size), "measurable_rate": made / given if given else None}
    if d.size:
        bias = float(d.mean())
        out.update(mae=float(np.abs(d).mean()), bias=bias, sd=None, loa_low=None,
                   loa_high=None)
        if d.size > 1:
            sd = float(d.std(ddof=1))
            out.update(sd=sd, loa_low=bias - 1.96 * sd, loa_high=bias + 1.96 * sd)
    else:
        out.update(mae=None, bias=None, sd=None, loa_low=None, loa_high=None)
    return out


def image_measurable(pred: dict, truth: dict) -> bool:
    """Every measure the ground truth gives, the prediction gives too."""
    return all(_value(pred, c) is not None for c in MEASURES if _value(truth, c) is not None)


def summarize(pred: Sequence[dict], truth: Sequence[dict]) -> dict:
    """The ``measures`` block of an evaluation's ``summary.json``: per headline group and per
    column the agreement, Meyerding grade agreement, and the image-level measurable rate."""
    per_column = {c: agreement(pred, truth, [c]) for c in MEASURES
                  if not c.startswith("meyerding_")}
    groups = {g: agreement(pred, truth, cols) for g, cols in GROUPS.items()}
    grades = [(p.get(c), t.get(c)) for p, t in zip(pred, truth)
              for c in MEASURES if c.startswith("meyerding_")
              if t.get(c) not in (None, "") and p.get(c) not in (None, "")]
    rate = (float(np.mean([image_measurable(p, t) for p, t in zip(pred, truth)]))
            if truth else None)
    return {"measurable_rate": rate, "groups": groups, "columns": per_column,
            "meyerding_agreement": (float(np.mean([int(float(a)) == int(float(b))
                                                   for a, b in grades])) if grades else None)}
