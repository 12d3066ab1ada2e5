"""A straightforward implementation of the study's four pixel metrics, with one boolean mask
per class, as the reference implementation (py_img_seg_eval ``eval_segm.py``) computes them.

Written from the formulas (see :mod:`train.metrics`), not copied. It is the peer that
``bench_metrics.py`` times and the cross-check the tests compare :mod:`train.metrics` with.
"""
from __future__ import annotations

import numpy as np


def _masks(segm: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.stack([segm == c for c in classes])


def reference_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    if pred.shape != gt.shape:
        raise ValueError("shape mismatch")
    gt_classes = np.unique(gt)
    all_classes = np.union1d(np.unique(pred), gt_classes)
    pm, gm = _masks(pred, gt_classes), _masks(gt, gt_classes)
    n_ii = [np.sum(np.logical_and(p, g)) for p, g in zip(pm, gm)]
    t_i = [np.sum(g) for g in gm]
    pixel_accuracy = sum(n_ii) / sum(t_i)
    mean_accuracy = float(np.mean([n / t for n, t in zip(n_ii, t_i)]))
    pm, gm = _masks(pred, all_classes), _masks(gt, all_classes)
    iu, fw = [], []
    for p, g in zip(pm, gm):
        if p.sum() == 0 or g.sum() == 0:
            iu.append(0.0)
            fw.append(0.0)
            continue
        n = np.sum(np.logical_and(p, g))
        t, s = np.sum(g), np.sum(p)
        iu.append(n / (t + s - n))
        fw.append(t * n / (t + s - n))
    return {"pixel_accuracy": float(pixel_accuracy), "mean_accuracy": mean_accuracy,
            "mean_iou": float(np.sum(iu) / len(gt_classes)),
            "frequency_weighted_iou": float(np.sum(fw) / gt.size)}
