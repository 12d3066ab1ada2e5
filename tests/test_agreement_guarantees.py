"""The agreement of predicted clinical measures with the ground truth's
(train/evaluation/agreement.py), against hand-computed Bland-Altman numbers.

Class of defect guarded: a wrong MAE, bias, SD or limits of agreement (a sign, a ddof, the
1.96), a missing prediction counted as agreement instead of as not measurable, measures the
truth does not give counted against the model, and headline groups pooling the wrong columns.
"""
from __future__ import annotations

import math

import pytest

from converters.spine.measures import MEASURES
from train.evaluation.agreement import GROUPS, agreement, image_measurable, summarize

SD = math.sqrt(12.5)  # differences 2 and -3: mean -0.5, squares 6.25 + 6.25 over n - 1 = 1


def test_agreement_by_hand():
    truth = [{"lordosis_deg": 40}, {"lordosis_deg": "50"}, {"lordosis_deg": 60},
             {"lordosis_deg": ""}, {}]
    pred = [{"lordosis_deg": 42}, {"lordosis_deg": 47.0}, {"lordosis_deg": ""},
            {"lordosis_deg": 30}, {"lordosis_deg": 1}]
    a = agreement(pred, truth, ["lordosis_deg"])
    assert a["n"] == 2
    assert a["measurable_rate"] == pytest.approx(2 / 3)   # the third image: prediction missing
    assert a["mae"] == pytest.approx(2.5)
    assert a["bias"] == pytest.approx(-0.5)                # prediction - truth
    assert a["sd"] == pytest.approx(SD)
    assert a["loa_low"] == pytest.approx(-0.5 - 1.96 * SD)
    assert a["loa_high"] == pytest.approx(-0.5 + 1.96 * SD)


def test_one_pair_has_no_spread_and_nothing_to_compare_gives_none():
    one = agreement([{"x": 3.0}], [{"x": 5.0}], ["x"])
    # one pair has no spread: no SD, no limits of agreement (not a zero-width band)
    assert (one["n"], one["mae"], one["bias"], one["sd"]) == (1, 2.0, -2.0, None)
    assert one["loa_low"] is one["loa_high"] is None and one["measurable_rate"] == 1.0
    missed = agreement([{"x": None}], [{"x": 5.0}], ["x"])
    assert missed["n"] == 0 and missed["measurable_rate"] == 0.0
    assert all(missed[k] is None for k in ("mae", "bias", "sd", "loa_low", "loa_high"))
    nothing = agreement([{"x": 1.0}], [{"x": None}], ["x"])
    assert nothing["measurable_rate"] is None and nothing["n"] == 0


def test_pooled_columns_count_every_value():
    truth = [{"a": 1.0, "b": 2.0, "c": 4.0}, {"a": None, "b": 3.0, "c": None},
             {"a": 5.0, "b": 1.0, "c": 1.0}]
    pred = [{"a": 2.0, "b": 2.0, "c": 4.0}, {"a": 9.0, "b": 4.0, "c": 9.0},
            {"a": None, "b": 2.0, "c": 0.0}]
    a = agreement(pred, truth, ["a", "b", "c"])
    # pairs: (2-1), (2-2), (4-4), (4-3), (2-1), (0-1); the truth's gaps are skipped, the
    # prediction's one gap (a of the third image) counts against the measurable rate
    assert a["n"] == 6 and a["measurable_rate"] == pytest.approx(6 / 7)
    assert a["mae"] == pytest.approx(4 / 6) and a["bias"] == pytest.approx(2 / 6)


def test_an_image_is_measurable_when_every_truth_measure_is_predicted():
    truth = {"lordosis_deg": 40.0, "seg_L1_L2_deg": ""}
    assert image_measurable({"lordosis_deg": 41.0}, truth)
    assert image_measurable({"lordosis_deg": 41.0, "seg_L1_L2_deg": 3.0}, truth)  # extra: fine
    assert not image_measurable({"lordosis_deg": ""}, truth)
    assert not image_measurable({}, truth)


def test_headline_groups_pool_their_own_columns():
    assert GROUPS["lordosis_deg"] == ["lordosis_deg"]
    assert len(GROUPS["segmental_deg"]) == 5 and all(c.endswith("_deg") and c.startswith("seg_")
                                                      for c in GROUPS["segmental_deg"])
    for group, n in (("disc_height_mm", 15), ("disc_height_px", 15), ("body_height_mm", 10),
                     ("body_height_px", 10), ("slip_pct", 5)):
        cols = GROUPS[group]
        assert len(cols) == n and set(cols) <= set(MEASURES)
        assert all(c.endswith(group[-3:]) for c in cols) or group == "slip_pct"
    pooled = sum(GROUPS.values(), [])
    assert len(pooled) == len(set(pooled))                   # no column counted twice


def test_summary_by_hand():
    truth = [{"lordosis_deg": 40.0, "seg_L1_L2_deg": 5.0, "meyerding_L4_L5": "1"},
             {"lordosis_deg": 50.0, "seg_L1_L2_deg": 7.0, "meyerding_L4_L5": "0",
              "meyerding_L5_S1": ""},
             {"lordosis_deg": 60.0, "meyerding_L5_S1": "2"}]
    pred = [{"lordosis_deg": 44.0, "seg_L1_L2_deg": 6.0, "meyerding_L4_L5": "1.0"},
            {"lordosis_deg": 50.0, "meyerding_L4_L5": "2", "meyerding_L5_S1": "1"},
            {"lordosis_deg": 57.0, "meyerding_L5_S1": 2}]
    s = summarize(pred, truth)
    assert s["measurable_rate"] == pytest.approx(2 / 3)      # the second misses a segment
    # 1 == 1.0, 0 != 2, 2 == 2; a grade the truth leaves empty is not compared
    assert s["meyerding_agreement"] == pytest.approx(2 / 3)
    assert s["groups"]["lordosis_deg"]["mae"] == pytest.approx(7 / 3)
    assert s["groups"]["lordosis_deg"]["bias"] == pytest.approx(1 / 3)
    assert s["groups"]["segmental_deg"]["n"] == 1
    assert s["groups"]["segmental_deg"]["measurable_rate"] == pytest.approx(0.5)
    assert set(s["groups"]) == set(GROUPS)
    assert set(s["columns"]) == {c for c in MEASURES if not c.startswith("meyerding_")}
    assert s["columns"]["seg_L1_L2_deg"]["bias"] == pytest.approx(1.0)


def test_summary_of_no_images_and_of_no_grades():
    empty = summarize([], [])
    assert empty["measurable_rate"] is None and empty["meyerding_agreement"] is None
    s = summarize([{"meyerding_L5_S1": ""}], [{"meyerding_L5_S1": "1"}])
    assert s["meyerding_agreement"] is None                  # a missing grade is no agreement
