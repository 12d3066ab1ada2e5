"""Pixel metrics of label masks: the study's four per-image metrics and pooled versions.

Masks are 2-D integer label images of the same shape, as ``spinepipe convert`` writes them
(uint8: 0 background, 1 lumbar, 2 sacrum, 255 ignore). Every value present is a class,
background included; 255 is not skipped but counted as one more class, exactly as the study's
reference implementation does (Long et al. 2015, as coded in martinkersner/py_img_seg_eval
``eval_segm.py``, reference [19] of the paper). With ``n_ij`` the number of pixels of
ground-truth class ``i`` predicted as ``j``, ``t_i = sum_j n_ij`` (ground-truth pixels of
``i``) and ``p_i = sum_j n_ji`` (predicted pixels of ``i``):

- ``pixel_accuracy`` = sum_i n_ii / sum_i t_i;
- ``mean_accuracy`` = mean of n_ii / t_i over the classes present in the ground truth;
- ``mean_iou`` = sum_i IU_i / (number of classes present in the ground truth), with
  IU_i = n_ii / (t_i + p_i - n_ii) for a class present in both masks and 0 otherwise (so a
  class that is only predicted adds 0 to the sum and nothing to the divisor, as in the
  reference);
- ``frequency_weighted_iou`` = sum_i t_i IU_i / (height x width).

Defined results: a ground truth and a prediction that are both all background score 1.0 on
all four; a mask with no pixels, or masks of different shapes, are errors. Values are
fractions in [0, 1] (the paper prints percentages).

Pooled ("dataset-level") versions sum the confusion matrices of all images first and are
labelled as such: pixel accuracy, mean accuracy, per-class IoU and Dice (2 n_ii / (t_i +
p_i)) and their means over the classes present, frequency-weighted IoU.

Speed: one confusion matrix per pair, without a boolean mask per class: pixels outside the
bounding box of both masks' non-zero pixels are (background, background) and only counted;
inside it, the ground truth's histogram gives the row sums and only the (few) disagreeing
pixels are visited for the off-diagonal entries.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from converters.core.errors import ShapeMismatchError, SpinepipeError

#: the per-image metric names, as ``spinepipe metrics`` prints them and reports use them
METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")
_EXACT_FLOAT32 = 1 << 24   # cv2.calcHist counts in float32: exact up to this many pixels


def confusion(pred: np.ndarray, gt: np.ndarray, *, image: str = "") -> np.ndarray:
    """The 256 x 256 confusion matrix (rows: ground truth, columns: prediction) of two uint8
    label masks, as int64. Other integer dtypes: values must lie in 0..255."""
    if pred.shape != gt.shape:
        raise ShapeMismatchError(f"prediction {pred.shape[:2]} and ground truth "
                                 f"{gt.shape[:2]} differ in shape", image=image)
    if gt.ndim != 2 or gt.size == 0:
        raise SpinepipeError(f"masks must be non-empty 2-D label images, got shape {gt.shape}",
                             image=image)
    if pred.dtype != np.uint8 or gt.dtype != np.uint8:
        for m in (pred, gt):
            if m.size and (m.min() < 0 or m.max() > 255):
                raise SpinepipeError("label values must lie in 0..255", image=image)
        pred, gt = pred.astype(np.uint8), gt.astype(np.uint8)
    gt, pred = np.ascontiguousarray(gt), np.ascontiguousarray(pred)
    cm = np.zeros((256, 256), np.int64)
    # outside the bounding box of every non-zero pixel of either mask all pairs are (0, 0):
    # they are counted, not visited
    x, y, w, h = cv2.boundingRect(cv2.bitwise_or(gt, pred))
    cm[0, 0] = gt.size - w * h
    if w * h == 0:
        return cm
    g, p = gt[y:y + h, x:x + w], pred[y:y + h, x:x + w]
    if g.size < _EXACT_FLOAT32:
        t = cv2.calcHist([g], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        t = np.bincount(g.ravel(), minlength=256).astype(np.int64)
    wrong = cv2.findNonZero(cv2.compare(g, p, cv2.CMP_NE))
    if wrong is not None:   # the few disagreeing pixels: their (truth, prediction) pairs
        xs, ys = wrong[:, 0, 0], wrong[:, 0, 1]
        cm += np.bincount(g[ys, xs].astype(np.intp) * 256 + p[ys, xs],
                          minlength=256 * 256).reshape(256, 256)
    off = cm.sum(1)
    off[0] -= cm[0, 0]
    cm[np.diag_indices(256)] += t - off
    return cm


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """The four per-image metrics (module docstring) from a confusion matrix."""
    t = cm.sum(1).astype(np.float64)
    p = cm.sum(0).astype(np.float64)
    n = np.diag(cm).astype(np.float64)
    total = t.sum()
    if total == 0:
        raise SpinepipeError("masks without pixels have no metrics")
    in_gt = t > 0
    both = in_gt & (p > 0)
    iu = np.zeros_like(t)
    iu[both] = n[both] / (t[both] + p[both] - n[both])
    return {
        "pixel_accuracy": float(n[in_gt].sum() / t[in_gt].sum()),
        "mean_accuracy": float(np.mean(n[in_gt] / t[in_gt])),
        "mean_iou": float(iu.sum() / in_gt.sum()),
        "frequency_weighted_iou": float((t * iu).sum() / total),
    }


def pixel_metrics(pred: np.ndarray, gt: np.ndarray, *, image: str = "") -> dict[str, float]:
    """The study's four per-image metrics of one prediction / ground-truth pair."""
    return metrics_from_confusion(confusion(pred, gt, image=image))


def pooled_metrics(cms: Iterable[np.ndarray], class_names: dict[int, str]) -> dict:
    """Dataset-level metrics of summed confusion matrices (labelled ``pooled``): pixel
    accuracy, mean accuracy, per-class IoU and Dice with their means over the classes that
    occur (in ground truth or prediction), frequency-weighted IoU."""
    total = None
    for cm in cms:
        total = cm.astype(np.int64) if total is None else total + cm
    if total is None:
        return {}
    t = total.sum(1).astype(np.float64)
    p = total.sum(0).astype(np.float64)
    n = np.diag(total).astype(np.float64)
    present = (t + p) > 0
    iou = np.divide(n, t + p - n, out=np.zeros_like(t), where=present)
    dice = np.divide(2 * n, t + p, out=np.zeros_like(t), where=present)
    in_gt = t > 0
    values = [int(v) for v in np.flatnonzero(present)]
    name = {v: class_names.get(v, str(v)) for v in values}
    return {
        "pixel_accuracy": float(n.sum() / t.sum()),
        "mean_accuracy": float(np.mean(n[in_gt] / t[in_gt])),
        "mean_iou": float(iou[present].mean()),
        "mean_dice": float(dice[present].mean()),
        "frequency_weighted_iou": float((t * iou).sum() / t.sum()),
        "iou": {name[v]: float(iou[v]) for v in values},
        "dice": {name[v]: float(dice[v]) for v in values},
        "confusion": {"classes": [name[v] for v in values],
                      "matrix": total[np.ix_(values, values)].tolist()},
    }
