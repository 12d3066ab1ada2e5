"""Recognition (train/evaluation/recognition.py) at its thresholds and edges, by hand (issue 30's
mutation run).

Class of defect guarded: an IoU, score, area or overlap exactly at its threshold judged on the
wrong side; one- and two-vertebra images mishandled; a high-scoring non-vertebra or an empty
mask that stops post-processing; scores lost on the way to the report; an overlap measured
with a wrong formula; a thin (one-pixel) mask dropped; a largest component that is not the
largest; centroids off the pixel-centre convention of the ground truth.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from train.evaluation.recognition import (Instances, RecognitionConfig, _centroid, _centroid_of,
                                          bounding_crop, components, containment_matrix, encode,
                                          encode_crop, largest_component, merged_class_mask,
                                          overlap_matrix, postprocess_instances, recognize)

H, W = 60, 40
CFG = RecognitionConfig(score_thr=0.3, nms_iou=0.5, min_area=4, match_iou=0.5,
                        overlap_min_fraction=0.5, largest_component=True)


def box(y0, y1, x0=10, x1=20):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def inst(*parts, scores=None) -> Instances:
    out = Instances()
    for k, (cls, mask) in enumerate(parts):
        out.classes.append(cls)
        out.rles.append(encode(mask))
        out.scores.append(1.0 if scores is None else scores[k])
        out.levels.append(None)
    return out.with_levels()


def test_an_iou_exactly_at_the_threshold_matches():
    gt = inst(("sacrum", box(40, 50)))
    half = inst(("sacrum", box(40, 45)))                 # IoU 50/100 = 0.5
    r = recognize(gt, half, CFG)
    assert r["recognized"] == 1 and r["n_matched"] == 1
    assert r["levels"]["S1"] == {"matched": True, "iou": 0.5, "predicted_level": "S1"}
    less = inst(("sacrum", box(40, 44)))
    r = recognize(gt, less, CFG)
    assert r["recognized"] == 0 and r["missed"] == ["S1"]
    assert r["levels"]["S1"] == {"matched": False, "iou": 0.0, "predicted_level": None}


def test_one_vertebra_and_no_vertebra():
    gt = inst(("sacrum", box(40, 50)))
    r = recognize(gt, gt, CFG)
    assert (r["recognized"], r["composite"], r["n_gt"], r["n_pred"]) == (1, 1, 1, 1)
    assert (r["gt_overlaps"], r["overlaps_apart"]) == (0, 0)
    empty = recognize(Instances(), gt, CFG)
    assert (empty["recognized"], empty["composite"], empty["n_gt"], empty["n_pred"]) == \
        (0, 0, 0, 1)


def test_a_two_vertebra_overlap_kept_apart_and_lost():
    gt = inst(("sacrum", box(40, 50)), ("lumbar", box(32, 42)))   # overlap 2 rows of 10
    cfg = RecognitionConfig(min_area=4, overlap_min_fraction=0.1)
    r = recognize(gt, gt, cfg)
    assert (r["gt_overlaps"], r["overlaps_apart"], r["composite"]) == (1, 1, 1)
    apart = inst(("sacrum", box(42, 50)), ("lumbar", box(32, 40)))
    r = recognize(gt, apart, cfg)
    assert r["recognized"] == 1 and r["composite"] == 0 and r["lost_overlaps"] == ["S1/L5"]


def test_an_unlevelled_miss_is_named_by_its_index():
    gt = inst(("lumbar", box(10, 20)))                   # no sacrum: L5 by position
    gt.levels[0] = None
    r = recognize(gt, Instances(), CFG)
    assert r["missed"] == ["0"] and r["levels"] == {}


def test_overlap_formula_and_threshold():
    a, b = box(10, 20), box(15, 25)                      # 100 px each, 50 shared: IoU 1/3
    pair = inst(("lumbar", a), ("lumbar", b))
    assert overlap_matrix(pair, 0.49).tolist() == [[False, True], [True, False]]
    assert not overlap_matrix(pair, 0.51).any()          # 50 < 0.51 x 100
    apart = inst(("lumbar", box(10, 20)), ("lumbar", box(30, 40)))
    assert not overlap_matrix(apart, 0.0).any()          # touching nothing is no overlap
    assert overlap_matrix(inst(("lumbar", a)), 0.5).tolist() == [[False]]
    assert overlap_matrix(Instances(), 0.5).shape == (0, 0)


def test_postprocessing_keeps_what_sits_exactly_at_each_threshold():
    masks = [box(0, 4, 0, 1), box(40, 50), box(40, 45)]  # 4 px (min_area); NMS IoU 0.5
    out = postprocess_instances(["lumbar", "sacrum", "sacrum"], masks, [0.3, 0.9, 0.8],
                                RecognitionConfig(score_thr=0.3, nms_iou=0.5, min_area=4,
                                                  containment_max=1.0))
    assert out.classes == ["sacrum", "sacrum", "lumbar"] and out.scores == [0.9, 0.8, 0.3]


def test_postprocessing_goes_past_what_it_drops():
    masks = [box(0, 10), np.zeros((H, W), bool), box(20, 21, 0, 2), box(40, 50)]
    out = postprocess_instances(["rod", "lumbar", "lumbar", "sacrum"], masks,
                                [0.99, 0.95, 0.9, 0.5], CFG)
    assert out.classes == ["sacrum"] and out.scores == [0.5] and out.levels == ["S1"]
    as_uint8 = postprocess_instances(["sacrum"], [box(40, 50).astype(np.uint8) * 7], [0.5], CFG)
    assert mask_utils.area(as_uint8.rles).tolist() == [100]


def test_components_keep_small_parts_at_min_area_and_every_class():
    mask = np.zeros((H, W), np.uint8)
    mask[0, 0] = 1                                       # 1 px lumbar
    mask[10:12, 10:12] = 1                               # 4 px lumbar
    mask[40:50, 10:20] = 2
    out = components(mask, {"lumbar": 1, "sacrum": 2})
    assert sorted(mask_utils.area(out.rles).tolist()) == [1, 4, 100]
    assert out.scores == [1.0, 1.0, 1.0]
    out = components(mask, {"lumbar": 1, "sacrum": 2}, min_area=4)
    assert sorted(mask_utils.area(out.rles).tolist()) == [4, 100]
    only_sacrum = components(mask, {"sacrum": 2})
    assert only_sacrum.classes == ["sacrum"]


def test_the_largest_component_is_the_largest():
    m = np.zeros((H, W), bool)
    m[0:2, 0:2] = True                                   # label 1: 4 px
    m[10:20, 10:20] = True                               # label 2: 100 px
    m[30:33, 30:33] = True                               # label 3: 9 px
    assert np.array_equal(largest_component(m), box(10, 20))
    diagonal = np.eye(5, dtype=bool)                     # one 8-connected region
    assert np.array_equal(largest_component(diagonal), diagonal)


@pytest.mark.parametrize("mask", [box(5, 6, 0, 30), box(0, 30, 7, 8)])
def test_a_one_pixel_wide_mask_has_a_crop(mask):
    x, y, crop = bounding_crop(mask)
    assert crop.sum() == 30 and crop.shape in ((1, 30), (30, 1))
    assert bounding_crop(np.zeros((H, W), bool)) is None


def test_rles_round_trip_through_json():
    rle = encode(box(3, 9))
    back = json.loads(json.dumps(rle))
    assert isinstance(back["counts"], str)
    assert np.array_equal(mask_utils.decode(back).astype(bool), box(3, 9))


def test_a_fragment_inside_is_fully_contained():
    pair = inst(("lumbar", box(10, 30)), ("lumbar", box(12, 14)))
    c = containment_matrix(pair)
    assert c[1, 0] == pytest.approx(1.0) and c[0, 1] == pytest.approx(20 / 200)
    assert containment_matrix(Instances()).shape == (0, 0)


def test_centroids_follow_the_pixel_centre_convention():
    m = box(10, 14, 2, 8)                                # pixel centres x 2.5..7.5, y 10.5..13.5
    m[13, 7] = False                                     # off-centre: (x, y) means of 23 pixels
    ys, xs = np.nonzero(m)
    expected = (xs.mean() + 0.5, ys.mean() + 0.5)
    rle = encode(m)
    assert _centroid(rle, mask_utils.toBbox(rle)) == pytest.approx(expected)
    x, y, crop = bounding_crop(m)
    assert _centroid_of(crop, x, y) == pytest.approx(expected)
    assert _centroid_of(np.zeros((4, 6), bool), 2, 10) == pytest.approx((5.0, 12.0))


def test_levels_scores_and_class_masks_survive_the_way_to_the_report():
    out = inst(("sacrum", box(40, 50)), ("lumbar", box(20, 30)), scores=[0.7, 0.6])
    assert out.scores == [0.7, 0.6] and out.levels == ["S1", "L5"]
    assert Instances().areas().shape == (0,)
    merged = merged_class_mask(out, (H, W), {"lumbar": 1, "sacrum": 2})
    assert merged.dtype == np.uint8 and set(np.unique(merged)) == {0, 1, 2}
    sub = out.subset([1])
    assert (sub.classes, sub.scores, sub.levels) == (["lumbar"], [0.6], ["L5"])


def test_a_cropped_rle_is_the_full_mask_and_kept_crops_are_served():
    crop = np.zeros((4, 3), bool)
    crop[1:3, :] = True
    rle = encode_crop(crop.astype(np.uint8), 5, 7, H, W)
    back = json.loads(json.dumps(rle))
    full = np.zeros((H, W), bool)
    full[8:10, 5:8] = True
    assert np.array_equal(mask_utils.decode(back).astype(bool), full)
    out = postprocess_instances(["sacrum", "lumbar"], [box(40, 50), box(20, 30)], [0.9, 0.8], CFG)
    assert out.crops is not None and len(out.crops) == 2
    x0, y0, m = out.mask(out.levels.index("S1"))
    assert (x0, y0, m.shape) == (10, 40, (10, 10)) and m.all()
    plain = inst(("sacrum", box(40, 50)))
    x0, y0, m = plain.mask(0)                            # no crops: the decoded mask
    assert (x0, y0) == (0, 0) and m.dtype == bool and np.array_equal(m, box(40, 50))


def test_one_shared_pixel_is_an_overlap_at_fraction_zero_and_small_ones_count():
    a, b = box(10, 20, 10, 20), box(19, 29, 19, 29)     # share the pixel (19, 19)
    assert overlap_matrix(inst(("lumbar", a), ("lumbar", b)), 0.0)[0, 1]
    dot = np.zeros((H, W), bool)
    dot[15, 15] = True                                   # one pixel inside a
    assert overlap_matrix(inst(("lumbar", a), ("lumbar", dot)), 0.6)[0, 1]


def test_levels_after_an_unlevelled_ground_truth_instance_are_reported():
    parts = [("lumbar", box(0, 4))] + [("lumbar", box(6 + 7 * k, 11 + 7 * k))
                                       for k in range(5)] + [("sacrum", box(45, 55))]
    gt = inst(*parts)
    assert gt.levels[0] is None and gt.levels[-1] == "S1"  # a sixth lumbar has no level
    r = recognize(gt, gt, CFG)
    assert set(r["levels"]) == {"L1", "L2", "L3", "L4", "L5", "S1"}
