"""Recognition and composite recognition rates (train/evaluation/recognition.py) on constructed
cases:
a lateral spine of rectangles, bottom to top S1, L5..L1, with L3 and L4 overlapping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from train.evaluation.recognition import (Instances, RecognitionConfig, components, encode,
                                          merged_class_mask, postprocess_instances, recognize)

H, W = 200, 60
CFG = RecognitionConfig(score_thr=0.3, nms_iou=0.5, min_area=5, match_iou=0.5,
                        overlap_min_fraction=0.01)
VALUES = {"lumbar": 1, "sacrum": 2}
# (class, y0, y1): 20-pixel vertebrae 5 pixels apart; L4 (y 80..100) and L3 (y 95..115) overlap
SPINE = [("sacrum", 170, 195), ("lumbar", 140, 160), ("lumbar", 110, 130), ("lumbar", 80, 100),
         ("lumbar", 62, 82), ("lumbar", 30, 50)]
# levels bottom-up: S1, L5 (140..160), L4 (110..130), L3 (80..100), L2 (62..82), L1 (30..50)
# overlapping pair: L3 (80..100) and L2 (62..82)


def box(y0, y1, x0=10, x1=50):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def instances(parts) -> Instances:
    inst = Instances()
    for cls, mask in parts:
        inst.classes.append(cls)
        inst.rles.append(encode(mask))
        inst.scores.append(1.0)
        inst.levels.append(None)
    return inst.with_levels()


GT = instances([(c, box(a, b)) for c, a, b in SPINE])


def test_ground_truth_levels_bottom_up():
    assert GT.levels == ["S1", "L5", "L4", "L3", "L2", "L1"]


def test_perfect_prediction():
    r = recognize(GT, instances([(c, box(a, b)) for c, a, b in SPINE]), CFG)
    assert (r["recognized"], r["composite"]) == (1, 1)
    assert r["missed"] == [] and r["shifted"] == [] and r["lost_overlaps"] == []
    assert all(v["matched"] for v in r["levels"].values())


def test_missing_vertebra_fails_and_shifts_levels_above():
    pred = instances([(c, box(a, b)) for c, a, b in SPINE if (a, b) != (110, 130)])  # no L4
    r = recognize(GT, pred, CFG)
    assert (r["recognized"], r["composite"]) == (0, 0)
    assert r["missed"] == ["L4"]
    # the predictions above the gap are counted one level too low
    assert r["shifted"] == ["L3", "L2", "L1"]
    assert r["levels"]["L3"]["predicted_level"] == "L4"


def test_fused_pair_of_a_semantic_model():
    mask = np.zeros((H, W), np.uint8)
    for c, a, b in SPINE:
        mask[box(a, b)] = VALUES[c]
    pred = components(mask, VALUES)          # L3 and L2 touch: one blob
    assert len(pred) == 5
    r = recognize(GT, pred, CFG)
    assert r["recognized"] == 0 and r["composite"] == 0
    assert len(r["missed"]) == 1 and r["missed"][0] in ("L3", "L2")
    assert (r["gt_overlaps"], r["overlaps_apart"]) == (1, 0)   # the fused pair is not apart


def test_false_split_of_one_vertebra():
    parts = [(c, box(a, b)) for c, a, b in SPINE if (a, b) != (140, 160)]
    parts += [("lumbar", box(140, 160, 10, 28)), ("lumbar", box(140, 160, 32, 50))]  # L5 in two
    r = recognize(GT, instances(parts), CFG)
    assert r["recognized"] == 0
    assert "L5" in r["missed"]


def test_overlap_lost_fails_only_the_composite_rate():
    parts = [(c, box(a, b)) for c, a, b in SPINE if (a, b) not in ((80, 100), (62, 82))]
    parts += [("lumbar", box(83, 100)), ("lumbar", box(62, 81))]  # L3 / L2 trimmed apart
    r = recognize(GT, instances(parts), CFG)
    assert (r["recognized"], r["composite"]) == (1, 0)
    assert r["lost_overlaps"] == ["L3/L2"]
    assert r["gt_overlaps"] == 1        # the ground truth's one overlapping pair (the subgroup)
    assert r["overlaps_apart"] == 1     # both matched: apart, though drawn without overlap


def test_overlap_where_the_truth_has_none_fails_the_composite_rate():
    parts = [(c, box(a, b)) for c, a, b in SPINE if (a, b) != (30, 50)]
    parts.append(("lumbar", box(30, 66)))   # L1 grown into L2
    r = recognize(GT, instances(parts), CFG)
    assert (r["recognized"], r["composite"]) == (1, 0)
    assert r["false_overlaps"] == ["L2/L1"]
    assert r["gt_overlaps"] == 1


def test_class_must_match():
    parts = [(c, box(a, b)) for c, a, b in SPINE[1:]] + [("lumbar", box(170, 195))]
    r = recognize(GT, instances(parts), CFG)
    assert r["recognized"] == 0 and r["missed"] == ["S1"]


def test_instance_postprocessing_threshold_nms_and_merge():
    masks = [box(a, b) for _, a, b in SPINE] + [box(141, 160), box(0, 20)]
    classes = [c for c, _, _ in SPINE] + ["lumbar", "lumbar"]
    scores = [0.9] * 6 + [0.8, 0.1]       # a duplicate of L5 and a low-score blob
    inst = postprocess_instances(classes, np.stack(masks), scores, CFG)
    assert len(inst) == 6 and sorted(inst.levels) == sorted(GT.levels)
    r = recognize(GT, inst, CFG)
    assert (r["recognized"], r["composite"]) == (1, 1)
    merged = merged_class_mask(inst, (H, W), VALUES)
    assert merged[180, 20] == 2 and merged[150, 20] == 1 and merged[5, 20] == 0


def test_empty_prediction():
    r = recognize(GT, Instances(), CFG)
    assert (r["recognized"], r["composite"], r["n_matched"]) == (0, 0, 0)
    assert len(r["missed"]) == 6


@pytest.mark.parametrize("min_fraction, overlapping", [(0.01, True), (0.5, False)])
def test_overlap_criterion(min_fraction, overlapping):
    cfg = RecognitionConfig(overlap_min_fraction=min_fraction, match_iou=0.5)
    r = recognize(GT, instances([(c, box(a, b)) for c, a, b in SPINE]), cfg)
    assert r["composite"] == 1   # same relation on both sides, whatever the criterion
    # the trimmed pair only counts as a lost overlap when the GT pair counts as overlapping
    parts = [(c, box(a, b)) for c, a, b in SPINE if (a, b) not in ((80, 100), (62, 82))]
    parts += [("lumbar", box(83, 100)), ("lumbar", box(62, 81))]
    assert (recognize(GT, instances(parts), cfg)["composite"] == 0) == overlapping


def test_islands_of_a_neighbour_are_not_overlaps_with_largest_component():
    """YOLACT's box-cropped masks: L1's mask carries an island inside L2 (a false overlap)
    and L2's a sliver along L3; the largest region alone is the vertebra."""
    masks, classes = [], []
    for c, a, b in SPINE:
        m = box(a, b)
        if (a, b) == (30, 50):        # L1 + an island at L2's top (not touching L1)
            m |= box(64, 68, 20, 30)
        masks.append(m)
        classes.append(c)
    plain = postprocess_instances(classes, np.stack(masks), [0.9] * 6,
                                  dataclasses.replace(CFG, largest_component=False))
    assert recognize(GT, plain, CFG)["false_overlaps"] == ["L2/L1"]
    kept = postprocess_instances(classes, np.stack(masks), [0.9] * 6, CFG)
    r = recognize(GT, kept, CFG)
    assert (r["recognized"], r["composite"], r["false_overlaps"]) == (1, 1, [])
    l1 = kept.levels.index("L1")
    assert (mask_utils.decode(kept.rles[l1]).astype(bool) == box(30, 50)).all()
    # a real overlap survives: L3 and L2 share rows 80..82 in one connected mask each
    assert r["gt_overlaps"] == 1 and r["lost_overlaps"] == []


def test_a_fragment_inside_a_vertebra_is_dropped_but_overlapping_neighbours_stay():
    """Mask R-CNN's fragments: a lower-scoring piece inside L4 (IoU with L4 0.3, so IoU NMS
    keeps it) would take a level of its own and shift every level above it."""
    masks = [box(a, b) for _, a, b in SPINE] + [box(112, 122, 12, 36)]   # inside L4
    classes = [c for c, _, _ in SPINE] + ["lumbar"]
    scores = [0.95] * len(SPINE) + [0.6]
    loose = postprocess_instances(classes, np.stack(masks), scores,
                                  dataclasses.replace(CFG, containment_max=1.0))
    assert len(loose) == 7 and loose.levels.count(None) == 1
    assert recognize(GT, loose, CFG)["shifted"]                   # the chain went through it
    kept = postprocess_instances(classes, np.stack(masks), scores, CFG)
    assert len(kept) == 6 and kept.levels == GT.levels
    r = recognize(GT, kept, CFG)
    assert (r["recognized"], r["composite"], r["shifted"]) == (1, 1, [])
    # L3 and L2 overlap (2 of 20 rows): neither covers half of the other, both stay
    assert r["gt_overlaps"] == 1 and r["lost_overlaps"] == []


def test_one_object_labelled_twice_keeps_its_better_class_but_neighbours_stay():
    """Mask R-CNN outlines the sacrum a second time as a lumbar vertebra: the copy would take L5
    and shift every level above it. Adjacent vertebrae of the two classes that overlap a little
    (L5 over the sacrum's top rows) both stay."""
    masks = [box(a, b) for _, a, b in SPINE] + [box(161, 199)]          # the sacrum, as lumbar
    classes = [c for c, _, _ in SPINE] + ["lumbar"]
    scores = [0.95] * len(SPINE) + [0.6]
    loose = postprocess_instances(classes, np.stack(masks), scores,
                                  dataclasses.replace(CFG, cross_class_iou=1.0))
    assert len(loose) == 7 and recognize(GT, loose, CFG)["shifted"]
    kept = postprocess_instances(classes, np.stack(masks), scores, CFG)
    assert kept.classes.count("lumbar") == 5 and kept.levels == GT.levels
    assert recognize(GT, kept, CFG)["recognized"] == 1
    # the better-scored class wins: the lumbar copy scored higher keeps the lumbar label
    swapped = postprocess_instances(classes, np.stack(masks), [0.5] + [0.95] * 5 + [0.9], CFG)
    assert swapped.classes.count("sacrum") == 0 and len(swapped) == 6
    # a small overlap between L5 and the sacrum is anatomy, not a duplicate
    touching = [box(158, 195)] + [box(a, b) for _, a, b in SPINE[1:]]   # over L5's last rows
    near = postprocess_instances([c for c, _, _ in SPINE], np.stack(touching), [0.9] * 6, CFG)
    assert len(near) == 6 and near.levels.count("S1") == 1


def test_a_class_mask_of_hundreds_of_components_is_read():
    """A noisy semantic prediction (400 one-pixel components of one class): pycocotools' area
    overflows at 256 RLEs in one call; every component is read, with its area, and the
    speckle gets no level beyond the five lumbar ones."""
    mask = np.zeros((40, 40), np.uint8)
    mask[::2, ::2] = 1
    inst = components(mask, {"lumbar": 1, "sacrum": 2})
    assert len(inst) == 400 and inst.areas().tolist() == [1.0] * 400
    assert sum(lv is not None for lv in inst.levels) == 5
