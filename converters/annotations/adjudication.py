"""Adjudication: the images the readers disagree on most, first, and the VIA project in which an
expert settles them (:mod:`converters.annotations.agreement` builds both; convert reads the
settled project back through :mod:`converters.annotations.readers`).

Worklist score, per image: the levels drawn by some readers only, plus 5 x (1 - the lowest IoU of
a level), plus the spread of the readers' lordosis / 5 degrees; ranked highest first, ties by
image name. The project: VIA 2 (:mod:`converters.annotations.via_project`), every reader's
polygons with region attributes ``class``, ``level`` and ``annotator``, and a file attribute
``settled`` (``no`` until the expert keeps one polygon per vertebra and sets it to ``yes``).
"""
from __future__ import annotations

from typing import Sequence

from converters.annotations.readers import SETTLED
from converters.annotations.regions import Outline
from converters.annotations.via_project import (ProjectImage, polygon_region, via2_project,
                                                via_filepath)

WORKLIST_FIELDS = ["rank", "image", "readers", "level_disagreements", "min_iou",
                   "lordosis_range_deg", "score"]


def rank_worklist(worklist: list[dict]) -> None:
    """Score and rank the worklist's rows in place (module docstring)."""
    for w in worklist:
        w["score"] = round(w["level_disagreements"] + 5 * (1 - (w["min_iou"] or 0.0))
                           + (w["lordosis_range_deg"] or 0.0) / 5, 4)
    worklist.sort(key=lambda w: (-w["score"], w["image"]))
    for k, w in enumerate(worklist, 1):
        w["rank"] = k


def adjudication_project(worklist: Sequence[dict], readers_of: dict[str, dict[str, list[Outline]]],
                         sizes: dict[str, int], *, class_attribute: str = "class",
                         default_filepath: str = "") -> dict:
    """The VIA 2 project for an expert (module docstring), images in worklist order;
    ``readers_of[image][reader]``: that reader's outlines; ``sizes``: file sizes in bytes."""
    images = []
    for w in worklist:
        image = w["image"]
        regions = [polygon_region(list(zip(o.xs, o.ys)), **{class_attribute: o.cls,
                                                              "level": o.level or "",
                                                              "annotator": reader})
                   for reader, outs in sorted(readers_of[image].items()) for o in outs]
        images.append(ProjectImage(image, sizes.get(image, -1), tuple(regions),
                                   {SETTLED: "no"}))
    project = via2_project(images, name="spinepipe adjudication", class_attribute=class_attribute,
                           default_filepath=via_filepath(default_filepath))
    text = {"type": "text", "default_value": ""}
    project["_via_attributes"]["region"].update({
        "level": {**text, "description": "vertebra level (L1-L5, S1) as the reader's polygons "
                  "gave it"},
        "annotator": {**text, "description": "the reader who drew it"}})
    project["_via_attributes"]["file"][SETTLED] = {
        "type": "dropdown", "description": "yes: the polygons left are this image's ground "
        "truth (one per vertebra)", "options": {"no": "not yet", "yes": "settled"},
        "default_options": {"no": True}}
    return project
