"""A straightforward implementation of the study's four pixel metrics, with one boolean mask
per class, structured as the reference implementation (py_img_seg_eval ``eval_segm.py``):
four independent metric functions, each extracting its own per-class masks.

Written from the formulas (see :mod:`train.evaluation.metrics`), not copied. It is the peer that
``bench_metrics.py`` times and the cross-check the tests compare :mod:`train.evaluation.metrics`
with.
"""
from __future__ import annotations

import numpy as np


def _both_masks(pred: np.ndarray, gt: np.ndarray, classes: np.ndarray):
    if pred.shape != gt.shape:
        raise ValueError("shape mismatch")
    return np.stack([pred == c for c in classes]), np.stack([gt == c for c in classes])


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    classes = np.unique(gt)
    pm, gm = _both_masks(pred, gt, classes)
    n_ii = sum(np.sum(np.logical_and(p, g)) for p, g in zip(pm, gm))
    t_i = sum(np.sum(g) for g in gm)
    return float(n_ii / t_i)


def mean_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    classes = np.unique(gt)
    pm, gm = _both_masks(pred, gt, classes)
    return float(np.mean([np.sum(np.logical_and(p, g)) / np.sum(g) for p, g in zip(pm, gm)]))


def _iu_terms(pred: np.ndarray, gt: np.ndarray):
    classes = np.union1d(np.unique(pred), np.unique(gt))
    pm, gm = _both_masks(pred, gt, classes)
    for p, g in zip(pm, gm):
        if np.sum(p) == 0 or np.sum(g) == 0:
            yield 0.0, 0.0
            continue
        n = np.sum(np.logical_and(p, g))
        t, s = np.sum(g), np.sum(p)
        yield n / (t + s - n), t


def mean_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(sum(iu for iu, _ in _iu_terms(pred, gt)) / len(np.unique(gt)))


def frequency_weighted_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(sum(t * iu for iu, t in _iu_terms(pred, gt)) / gt.size)


def reference_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {f.__name__: f(pred, gt) for f in (pixel_accuracy, mean_accuracy, mean_iou,
                                               frequency_weighted_iou)}
