"""The fixed test set's ground truth, as evaluate reads it: split's ``test.json`` (COCO; polygons
in the COCO convention of :mod:`converters.annotations.coco`, decoded to RLE by pycocotools) and
convert's class masks (``masks/<stem>.png``: uint8, 0 background, 1 lumbar, 2 sacrum, 255
ignored), read as one-channel label PNGs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from converters.core.errors import InsufficientDataError, SpinepipeError
from converters.core.records import read_json
from train.evaluation.recognition import VERTEBRA_CLASSES, Instances


@dataclass
class TestSet:
    """Ground truth of the test set: COCO images / instances and the class masks folder;
    ``outlines`` per image id: (level, polygon vertices) of each vertebra, for the clinical
    measures."""

    images: list[dict]
    instances: dict[int, Instances]
    class_values: dict[str, int]
    masks: Path
    outlines: dict[int, list[tuple[str | None, np.ndarray]]] = field(default_factory=dict)

    @classmethod
    def load(cls, coco_path: str | Path, masks: str | Path) -> "TestSet":
        coco_path = Path(coco_path)
        coco = read_json(coco_path, what="test set", made_by="split",
                         keys={"images": list, "annotations": list, "categories": list})
        if not coco.get("images"):
            raise InsufficientDataError("the test set is empty", file=coco_path)
        values = {c["name"]: int(c["id"]) for c in coco["categories"]}
        size = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
        inst = {im["id"]: Instances() for im in coco["images"]}
        outlines: dict[int, list] = {im["id"]: [] for im in coco["images"]}
        for ann in coco["annotations"]:
            h, w = size[ann["image_id"]]
            seg = ann["segmentation"]
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) \
                else seg
            target = inst[ann["image_id"]]
            target.classes.append(next(k for k, v in values.items() if v == ann["category_id"]))
            target.rles.append(rle)
            target.scores.append(1.0)
            target.levels.append(ann.get("level"))
            if isinstance(seg, list) and seg and target.classes[-1] in VERTEBRA_CLASSES:
                outlines[ann["image_id"]].append(
                    (ann.get("level"), np.asarray(seg[0], dtype=np.float64).reshape(-1, 2)))
        return cls(sorted(coco["images"], key=lambda im: im["file_name"]), inst, values,
                   Path(masks), outlines)


def read_mask(path: Path, *, what: str) -> np.ndarray:
    """A one-channel label PNG."""
    if not Path(path).is_file():
        raise SpinepipeError(f"{what} PNG not found", file=path)
    mask = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise SpinepipeError(f"unreadable {what} PNG", file=path)
    if mask.ndim != 2:
        raise SpinepipeError(f"{what} must be a one-channel label PNG, got shape {mask.shape}",
                             file=path)
    return mask
