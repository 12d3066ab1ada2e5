"""Vertebral levels: L1-L5 and S1, assigned bottom-up from the sacrum.

Each vertebra of an image gets ``L1``..``L5`` / ``S1``: the largest sacrum instance is S1; the
lumbar instance nearest (centroid to centroid, pixels) to the sacrum is L5, the one nearest to
L5 is L4, and so on, which follows the lordotic curve. Without a sacrum the chain starts at the
lowest lumbar instance (largest centroid y). Lumbar instances beyond five, other sacra and
other classes get no level (``None``). Used for annotations (convert) and predictions (evaluate)
alike, so a missed vertebra shows up as a level shift on both sides; one difference: an
annotator's more than five lumbar vertebrae (a transitional spine) get no lumbar level at all
(:func:`assign_levels`), while a model's sixth is an extra instance (its topmost unlevelled).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from converters.annotations.regions import Outline

LUMBAR = ("L1", "L2", "L3", "L4", "L5")
LEVELS = (*LUMBAR, "S1")


def segment_order(segment: str) -> tuple[int, ...]:
    """Sort key of a segment named ``"<upper>/<lower>"`` (``"L5/S1"``, ``"L4/S1"`` across a
    missing L5): cranial first, by its upper level, then its lower."""
    return tuple(LEVELS.index(lv) for lv in segment.split("/"))


def levels_bottom_up(classes: Sequence[str], centroids: Sequence[Sequence[float]],
                     areas: Sequence[float]) -> list[str | None]:
    """Levels of the instances of one image (bottom-up from the sacrum by nearest centroid,
    see the module docstring). ``centroids`` are (x, y) in pixels; the largest sacrum is S1; lumbar
    instances beyond five, other sacra and other classes get ``None``."""
    levels: list[str | None] = [None] * len(classes)
    c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    sacra = [i for i, k in enumerate(classes) if k == "sacrum"]
    remaining = [i for i, k in enumerate(classes) if k == "lumbar"]
    if sacra:
        s = max(sacra, key=lambda i: areas[i])
        levels[s] = "S1"
        current = c[s]
    elif remaining:
        current = c[max(remaining, key=lambda i: c[i, 1])] + np.array([0, 1e-6])
    for level in reversed(LUMBAR):
        if not remaining:
            break
        i = min(remaining, key=lambda j: float(np.linalg.norm(c[j] - current)))
        remaining.remove(i)
        levels[i], current = level, c[i]
    return levels


def assign_levels(instances: Sequence[Outline]) -> None:
    """Set ``level`` of each annotated instance: L5..L1 bottom-up from the sacrum, by nearest
    centroid; S1 for the sacrum. An annotator who drew more lumbar vertebrae than five saw a
    lumbosacral transitional spine (a sixth lumbar vertebra) or counted a thoracic one: which
    is L5 cannot be told from the outlines, so no lumbar level is assigned (never guessed);
    convert reports the count (``lumbar_count``)."""
    polygons = [i.polygon() for i in instances]
    classes = [i.cls for i in instances]
    levels = levels_bottom_up(classes, [(p.centroid.x, p.centroid.y) for p in polygons],
                              [p.area for p in polygons])
    if classes.count("lumbar") > len(LUMBAR):
        levels = [None if k == "lumbar" else lv for k, lv in zip(classes, levels)]
    for inst, level in zip(instances, levels):
        inst.level = level
