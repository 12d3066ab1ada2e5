"""Instances of a prediction and the study's recognition rates, judged automatically.

An *instance* is one binary mask in pycocotools RLE (the COCO convention of
:mod:`converters.annotations.coco`), with its class (``lumbar`` / ``sacrum``), a score and a level.

- Instance models: the model's instances, kept when ``score >= score_thr`` and at least
  ``min_area`` pixels, then same-class mask NMS (an instance whose mask IoU with a kept,
  higher-scoring instance of its class exceeds ``nms_iou`` is dropped): the paper's remedies;
  and an instance covered for more than ``containment_max`` of its own area by such an
  instance is a fragment of that vertebra, dropped too (overlapping neighbours share a few
  per cent of their area, far below). An instance whose mask IoU with a kept, higher-scoring
  instance of the *other* class exceeds ``cross_class_iou`` is that object labelled twice (a
  sacrum also called a lumbar vertebra takes a level of its own and shifts every level above
  it), dropped: vertebrae of different classes overlap by a few per cent at most.
  With ``largest_component`` each instance first keeps its largest connected region
  (8-connectivity): a vertebral body is one region, and YOLACT's masks (a linear combination
  of low-resolution prototypes, cropped to the predicted box) leave islands of the
  neighbouring vertebra inside the box, which would otherwise read as overlaps.
- Semantic models: the connected components (8-connectivity) of each class of the class mask;
  vertebrae fused into one blob stay one instance, which is the point of the comparison (the
  clinical measures cut such a blob into its bodies: :mod:`converters.spine.fused`).
- Levels: ``L1``..``L5`` / ``S1`` bottom-up from the sacrum, as for the ground truth
  (:func:`converters.spine.levels.levels_bottom_up`).

Recognition (per image, 1 or 0): every ground-truth lumbar vertebra and the sacrum is matched
one-to-one by a distinct predicted instance of its class with mask IoU >= ``match_iou``
(maximum-IoU assignment, scipy's ``linear_sum_assignment``). Extra predictions (a thoracic
vertebra, say) do not fail recognition.

Composite recognition: recognition, and additionally 0 when two ground-truth instances overlap
but their matched predictions do not ("falsely non-overlapping"), or two matched predictions
overlap where their ground truths do not. An overlapping ground-truth pair is *kept apart*
when both of its vertebrae are matched, each by its own prediction (a semantic model's fused
blob matches at most one of them): the study's question, per pair.
Two instances *overlap* when their intersection covers at least ``overlap_min_fraction`` of the
smaller one (a few boundary pixels shared by neighbours are not an overlap).

Per level: whether each ground-truth level was matched, and whether the matched prediction
carries another level (a level shift, e.g. a missed L5 shifts every level above it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from converters.annotations.coco import mask_outline
from converters.spine.levels import levels_bottom_up

VERTEBRA_CLASSES = ("lumbar", "sacrum")


@dataclass(frozen=True)
class PostprocessConfig:
    """params.yaml section ``postprocess``: which of a model's instances are kept, and when two
    overlap; read alike by ``evaluate`` and ``propose`` (module docstring)."""

    score_thr: float = 0.3              # instance models: minimum score
    nms_iou: float = 0.5                # instance models: same-class mask NMS threshold
    min_area: int = 20                  # pixels: smaller instances / components are dropped
    overlap_min_fraction: float = 0.01  # of the smaller instance's area
    largest_component: bool = True      # instance models: each mask keeps its largest region
    #: instance models: an instance this much covered by a kept, higher-scoring instance of
    #: its class is a fragment of that vertebra, dropped (NMS by IoU misses a fragment: it is
    #: small, so its IoU with the whole stays low)
    containment_max: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    #: instance models: an instance whose IoU with a kept, higher-scoring instance of another
    #: class exceeds this is the same object labelled twice, dropped (1.0: never)
    cross_class_iou: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})


@dataclass(frozen=True)
class RecognitionConfig(PostprocessConfig):
    """Post-processing and the IoU at which a ground-truth instance is recognized (evaluate's
    ``match_iou``)."""

    match_iou: float = 0.5


@dataclass
class Instances:
    """Instances of one image: class names, RLEs, scores, levels (same order)."""

    classes: list[str] = field(default_factory=list)
    rles: list[dict] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    levels: list[str | None] = field(default_factory=list)
    #: optional, per instance ``(x0, y0, mask in its bounding box)``: post-processing keeps
    #: them so that nothing decodes a full-size RLE again (radiographs are large)
    crops: list[tuple[int, int, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.classes)

    def areas(self) -> np.ndarray:
        return rle_areas(self.rles)

    def subset(self, keep: list[int]) -> "Instances":
        return Instances([self.classes[i] for i in keep], [self.rles[i] for i in keep],
                         [self.scores[i] for i in keep], [self.levels[i] for i in keep],
                         None if self.crops is None else [self.crops[i] for i in keep])

    def mask(self, i: int) -> tuple[int, int, np.ndarray]:
        """``(x0, y0, mask)`` of instance i: its crop when kept, else the decoded RLE."""
        if self.crops is not None:
            return self.crops[i]
        return 0, 0, mask_utils.decode(self.rles[i]).astype(bool)

    def outline(self, i: int) -> np.ndarray | None:
        """Instance i's mask traced along the pixel edges, in image coordinates
        (:func:`converters.annotations.coco.mask_outline`); None when empty."""
        x0, y0, mask = self.mask(i)
        traced = mask_outline(mask.astype(bool, copy=False))
        return None if traced is None else traced + (x0, y0)

    def with_levels(self) -> "Instances":
        """A copy with levels assigned bottom-up from the sacrum."""
        if not self.rles:
            return Instances()
        if self.crops is not None:
            centroids = [_centroid_of(c, x0, y0) for x0, y0, c in self.crops]
        else:
            boxes = mask_utils.toBbox(self.rles)
            centroids = [_centroid(r, b) for r, b in zip(self.rles, boxes)]
        levels = levels_bottom_up(self.classes, centroids, list(self.areas()))
        return Instances(list(self.classes), list(self.rles), list(self.scores), levels,
                         None if self.crops is None else list(self.crops))


def encode(mask: np.ndarray) -> dict:
    """RLE of a binary mask, ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_areas(rles: list[dict]) -> np.ndarray:
    """The pixel areas of RLEs (pycocotools' ``area`` overflows at 256 of them in one call: a
    uint8 count, under numpy 2; a noisy class mask has that many components)."""
    return np.concatenate([np.zeros(0)] + [
        np.asarray(mask_utils.area(rles[i:i + 255]), dtype=np.float64)
        for i in range(0, len(rles), 255)])


def encode_crop(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """RLE of a full ``height x width`` mask that is ``crop`` at ``(x0, y0)``, zero elsewhere
    (only the crop is written; the zeros cost nothing until read)."""
    full = np.zeros((height, width), np.uint8, order="F")
    full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    rle = mask_utils.encode(full)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def bounding_crop(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """``(x0, y0, mask[y0:y1, x0:x1])`` over the mask's set pixels; None when empty."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    if w == 0 or h == 0:
        return None
    return x, y, mask[y:y + h, x:x + w]


def _centroid_of(crop: np.ndarray, x0: int, y0: int) -> tuple[float, float]:
    """Centroid (x, y) of a cropped mask, pixel centres at +0.5
    (:mod:`converters.annotations.coco`)."""
    mom = cv2.moments(crop.view(np.uint8), binaryImage=True)
    if mom["m00"] == 0:
        return (x0 + crop.shape[1] / 2, y0 + crop.shape[0] / 2)
    return (x0 + mom["m10"] / mom["m00"] + 0.5, y0 + mom["m01"] / mom["m00"] + 0.5)


def _centroid(rle: dict, box: np.ndarray) -> tuple[float, float]:
    """Centroid (x, y) of a mask, pixel centres at +0.5 (:mod:`converters.annotations.coco`)."""
    x0, y0, w, h = (int(v) for v in box)
    m = mask_utils.decode(rle)[y0:y0 + h, x0:x0 + w]
    mom = cv2.moments(m, binaryImage=True)
    if mom["m00"] == 0:
        return (x0 + w / 2, y0 + h / 2)
    return (x0 + mom["m10"] / mom["m00"] + 0.5, y0 + mom["m01"] / mom["m00"] + 0.5)


def iou_matrix(a: Instances, b: Instances) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a.rles, b.rles, [0] * len(b)), dtype=np.float64)


def overlap_matrix(inst: Instances, min_fraction: float) -> np.ndarray:
    """Symmetric boolean matrix: instances i and j overlap (module docstring)."""
    n = len(inst)
    if n < 2:
        return np.zeros((n, n), bool)
    iou = iou_matrix(inst, inst)
    area = inst.areas()
    pair = area[:, None] + area[None, :]
    inter = iou * pair / (1.0 + iou)              # I = IoU (A + B) / (1 + IoU)
    smaller = np.minimum(area[:, None], area[None, :])
    out = (inter > 0) & (inter >= min_fraction * np.maximum(smaller, 1))
    np.fill_diagonal(out, False)
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a binary mask (the mask itself when it has one)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def postprocess_instances(classes: list[str], masks: list[np.ndarray] | np.ndarray,
                          scores: list[float], cfg: PostprocessConfig) -> Instances:
    """An instance model's raw output -> kept instances with levels (module docstring)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    cand = Instances(crops=[])
    for i in order:
        if scores[i] < cfg.score_thr or classes[i] not in VERTEBRA_CLASSES:
            continue
        m = np.asarray(masks[i])
        box = bounding_crop(m if m.dtype == bool else m.astype(bool))
        if box is None:
            continue
        x0, y0, crop = box             # every step below works in the mask's bounding box
        if cfg.largest_component:
            crop = largest_component(crop)
        if int(np.count_nonzero(crop)) < cfg.min_area:
            continue
        cand.classes.append(classes[i])
        cand.rles.append(encode_crop(crop, x0, y0, *m.shape))
        cand.scores.append(float(scores[i]))
        cand.levels.append(None)
        cand.crops.append((x0, y0, crop))
    iou = iou_matrix(cand, cand)
    inside = containment_matrix(cand)
    keep: list[int] = []
    for i in range(len(cand)):   # descending score
        if all(iou[i, j] <= cfg.cross_class_iou if cand.classes[j] != cand.classes[i] else
               (iou[i, j] <= cfg.nms_iou and inside[i, j] <= cfg.containment_max)
               for j in keep):
            keep.append(i)
    return cand.subset(keep).with_levels()


def containment_matrix(inst: Instances) -> np.ndarray:
    """``[i, j]``: the share of instance i's area that instance j covers."""
    n = len(inst)
    if not n:
        return np.zeros((0, 0))
    areas = rle_areas(inst.rles)
    # pycocotools' iou with iscrowd=1 divides the intersection by the first argument's area
    return np.asarray(mask_utils.iou(inst.rles, inst.rles, [1] * n), dtype=np.float64) \
        if areas.all() else np.zeros((n, n))


def components(class_mask: np.ndarray, class_values: dict[str, int],
               min_area: int = 0) -> Instances:
    """Connected components (8-connectivity) of each class of a class mask, with levels."""
    out = Instances(crops=[])
    for name in VERTEBRA_CLASSES:
        value = class_values.get(name)
        if value is None:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            (class_mask == value).view(np.uint8), connectivity=8)
        for k in range(1, n):
            if stats[k, cv2.CC_STAT_AREA] < max(min_area, 1):
                continue
            x0, y0, w, h = (int(v) for v in stats[k, :4])
            crop = labels[y0:y0 + h, x0:x0 + w] == k
            out.classes.append(name)
            out.rles.append(encode_crop(crop, x0, y0, *class_mask.shape))
            out.scores.append(1.0)
            out.levels.append(None)
            out.crops.append((x0, y0, crop))
    return out.with_levels()


def merged_class_mask(inst: Instances, shape: tuple[int, int],
                      class_values: dict[str, int]) -> np.ndarray:
    """The merged class mask of instances; where classes overlap, the larger value wins (as
    in the ground-truth masks of :mod:`converters.annotations.coco`)."""
    out = np.zeros(shape, np.uint8)
    for cls, rle in zip(inst.classes, inst.rles):
        np.maximum(out, mask_utils.decode(rle) * np.uint8(class_values[cls]), out=out)
    return out


def recognize(gt: Instances, pred: Instances, cfg: RecognitionConfig) -> dict:
    """Recognition, composite recognition and per-level results of one image."""
    want = [i for i, c in enumerate(gt.classes) if c in VERTEBRA_CLASSES]
    gt = gt.subset(want)
    iou = iou_matrix(gt, pred)
    same = np.array([[g == p for p in pred.classes] for g in gt.classes], bool).reshape(iou.shape)
    score = np.where(same, iou, 0.0)
    rows, cols = linear_sum_assignment(-score) if score.size else ([], [])
    match = {int(r): int(c) for r, c in zip(rows, cols) if score[r, c] >= cfg.match_iou}
    recognized = len(gt) > 0 and len(match) == len(gt)

    lost, false, gt_overlaps, apart = [], [], 0, 0
    if len(gt) > 1:
        gto = overlap_matrix(gt, cfg.overlap_min_fraction)
        pairs = list(zip(*np.nonzero(np.triu(gto, 1))))
        gt_overlaps = len(pairs)
        # kept apart: both vertebrae of an overlapping pair matched, each by its own prediction
        apart = sum(int(a) in match and int(b) in match for a, b in pairs)
        pro = overlap_matrix(pred, cfg.overlap_min_fraction)
        matched = sorted(match)
        for a_i, a in enumerate(matched):
            for b in matched[a_i + 1:]:
                pair = f"{gt.levels[a] or a}/{gt.levels[b] or b}"
                g_ov, p_ov = gto[a, b], pro[match[a], match[b]]
                if g_ov and not p_ov:
                    lost.append(pair)
                elif p_ov and not g_ov:
                    false.append(pair)
    per_level = {}
    for i, level in enumerate(gt.levels):
        if level is None:
            continue
        j = match.get(i)
        per_level[level] = {"matched": j is not None,
                            "iou": float(iou[i, j]) if j is not None else 0.0,
                            "predicted_level": pred.levels[j] if j is not None else None}
    return {
        "recognized": int(recognized),
        "composite": int(recognized and not lost and not false),
        "n_gt": len(gt),
        "n_pred": len(pred),
        "n_matched": len(match),
        "gt_overlaps": gt_overlaps,
        "overlaps_apart": apart,
        "missed": [gt.levels[i] or str(i) for i in range(len(gt)) if i not in match],
        "shifted": [lv for lv, r in per_level.items()
                    if r["matched"] and r["predicted_level"] != lv],
        "lost_overlaps": lost,
        "false_overlaps": false,
        "levels": per_level,
    }
