"""Pixel metrics (train/evaluation/metrics.py): hand-computed pooled metrics, exact counts on the
largest radiographs, mixed integer masks, and errors that name the image (issue 30's mutation run).

Class of defect guarded: a pooled metric with a wrong formula or wrong classes counted (a
class seen once, a class only predicted), counts rounded on images above 16.7 megapixels
(float32 histograms), counts turned into floats in the reports, a report key renamed, a
one-pixel mask refused, and a metrics error that no longer says which image it is about.
"""
from __future__ import annotations

import numpy as np
import pytest

from converters.core.errors import ShapeMismatchError, SpinepipeError
from train.evaluation.metrics import (confusion, metrics_from_confusion, pixel_metrics,
                                      pooled_metrics)

NAMES = {0: "background", 1: "lumbar", 2: "sacrum"}


def m(rows, dtype=np.uint8):
    return np.array(rows, dtype)


def test_pooled_metrics_by_hand():
    # image 1: (truth, prediction) pairs (1,1) (1,2) (2,2) (0,0); image 2: (0,3) (0,0)
    cms = [confusion(m([[1, 2], [2, 0]]), m([[1, 1], [2, 0]])),
           confusion(m([[3, 0]]), m([[0, 0]]))]
    r = pooled_metrics(cms, NAMES)
    assert set(r) == {"pixel_accuracy", "mean_accuracy", "mean_iou", "mean_dice",
                      "frequency_weighted_iou", "iou", "dice", "confusion"}
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert r["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)   # classes in truth
    assert r["iou"] == pytest.approx({"background": 2 / 3, "lumbar": 1 / 2, "sacrum": 1 / 2,
                                      "3": 0.0})
    assert r["dice"] == pytest.approx({"background": 4 / 5, "lumbar": 2 / 3, "sacrum": 2 / 3,
                                       "3": 0.0})
    assert r["mean_iou"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 4)
    assert r["mean_dice"] == pytest.approx((4 / 5 + 2 / 3 + 2 / 3) / 4)
    assert r["frequency_weighted_iou"] == pytest.approx((3 * 2 / 3 + 2 / 2 + 1 / 2) / 6)
    assert r["confusion"] == {"classes": ["background", "lumbar", "sacrum", "3"],
                              "matrix": [[2, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]}
    assert all(type(v) is int for row in r["confusion"]["matrix"] for v in row)
    assert pooled_metrics([], NAMES) == {}


def test_counts_are_exact_integers_above_16_7_megapixels():
    side = 4097                                    # 16 785 409 pixels > 2**24
    gt = np.ones((side, side), np.uint8)
    gt[0, 0] = gt[0, 1] = 2                        # 16 785 407 pixels of class 1: odd
    pred = gt.copy()
    pred[5, 5] = 2
    cm = confusion(pred, gt)
    assert cm.dtype == np.int64
    assert cm[1, 1] == side * side - 3 and cm[1, 2] == 1 and cm[2, 2] == 2
    assert cm.sum() == side * side


def test_a_one_pixel_mask_has_metrics_and_an_empty_matrix_none():
    assert pixel_metrics(m([[1]]), m([[1]])) == {"pixel_accuracy": 1.0, "mean_accuracy": 1.0,
                                                 "mean_iou": 1.0,
                                                 "frequency_weighted_iou": 1.0}
    with pytest.raises(SpinepipeError, match="without pixels"):
        metrics_from_confusion(np.zeros((256, 256), np.int64))


@pytest.mark.parametrize("pred_dtype, gt_dtype", [(np.uint8, np.int32), (np.int32, np.uint8),
                                                  (np.int64, np.int64)])
def test_mixed_integer_masks_score_as_uint8(pred_dtype, gt_dtype):
    pred, gt = [[0, 255, 2], [1, 1, 0]], [[0, 255, 1], [1, 2, 0]]
    expected = confusion(m(pred), m(gt))
    assert np.array_equal(confusion(m(pred, pred_dtype), m(gt, gt_dtype)), expected)


@pytest.mark.parametrize("bad", [256, -1])
@pytest.mark.parametrize("which", ["pred", "gt"])
def test_labels_outside_0_255_are_refused_naming_the_image(bad, which):
    good, wrong = m([[0, 1]], np.int32), m([[0, bad]], np.int32)
    pred, gt = (wrong, good) if which == "pred" else (good, wrong)
    with pytest.raises(SpinepipeError, match="0..255") as err:
        pixel_metrics(pred, gt, image="img7")
    assert err.value.image == "img7"


def test_shape_errors_name_the_image_and_both_shapes():
    with pytest.raises(ShapeMismatchError) as err:
        pixel_metrics(m([[0, 1]]), m([[0], [1]]), image="img3")
    assert err.value.image == "img3" and "(1, 2)" in str(err.value) and "(2, 1)" in str(err.value)
    with pytest.raises(SpinepipeError, match="2-D") as err:
        confusion(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), image="img4")
    assert err.value.image == "img4"
    with pytest.raises(ShapeMismatchError) as err:
        confusion(m([[0, 1]]), m([[0, 1, 1]]))
    assert err.value.image in ("", None)
