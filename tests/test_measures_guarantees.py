"""Clinical measures' tables and grades (converters/measures.py), by hand (issue 30's mutation
run).

Class of defect guarded: ``measures.csv`` with shifted, renamed or unrounded columns, a
missing measure written as something other than an empty cell, a Meyerding grade off at its
boundaries, a measure said to need the wrong levels, and ``not_measurable`` reasons out of
anatomical order.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from converters.measures import (COLUMNS, MEASURES, Spine, find_vertebrae, image_measures,
                                 measures_csv,
                                 measures_from_endplates, meyerding, reasons,
                                 uses)


def test_measures_csv_writes_every_column_rounded_and_blanks_for_none():
    row = {c: None for c in COLUMNS}
    row.update(file_name="a.png", lordosis_deg=41.23456, meyerding_L4_L5=2,
               pixel_spacing_mm=0.15, not_measurable="L1: missing")
    text = measures_csv([row, dict(row, file_name="b.png")])
    lines = text.split("\n")
    assert lines[0] == ",".join(COLUMNS) and lines[-1] == "" and len(lines) == 4
    got = list(csv.DictReader(io.StringIO(text)))
    assert [g["file_name"] for g in got] == ["a.png", "b.png"]
    assert got[0]["lordosis_deg"] == "41.2346" and got[0]["meyerding_L4_L5"] == "2"
    assert got[0]["pixel_spacing_mm"] == "0.1500" and got[0]["not_measurable"] == "L1: missing"
    assert got[0]["seg_L1_L2_deg"] == "" and "\r" not in text
    assert measures_csv([]) == ",".join(COLUMNS) + "\n"


@pytest.mark.parametrize("column, levels", [
    ("lordosis_deg", ("L1", "S1")), ("seg_L5_S1_deg", ("L5", "S1")),
    ("disc_L2_L3_middle_mm", ("L2", "L3")), ("body_L4_anterior_px", ("L4",)),
    ("slip_L4_L5_pct", ("L4", "L5")), ("meyerding_L3_L4", ("L3", "L4")),
])
def test_each_measure_needs_its_own_levels(column, levels):
    assert column in MEASURES and uses(column) == levels


@pytest.mark.parametrize("slip, grade", [(-30.0, 0), (4.99, 0), (5.0, 1), (25.0, 1),
                                         (25.01, 2), (50.0, 2), (75.0, 3), (99.9, 4),
                                         (100.0, 4), (100.01, 5), (300.0, 5)])
def test_meyerding_grades_at_their_boundaries(slip, grade):
    # grade I up to 25 %, II to 50 %, III to 75 %, IV to 100 %, V (spondyloptosis) beyond;
    # slips under 5 % are no listhesis
    assert meyerding(slip) == grade


def test_reasons_are_listed_from_l1_down():
    spine = Spine(unusable={"S1": "missing", "L2": "fused with L3", "L1": "missing"})
    assert reasons(spine) == "L1: missing; L2: fused with L3; S1: missing"
    assert reasons(Spine()) == ""


def _corners(y0, tilt_deg, width=10.0):
    """An endplate from posterior (0, y0) to anterior, tilted up anteriorly by tilt_deg."""
    return [[0.0, y0], [width, y0 - width * math.tan(math.radians(tilt_deg))]]


def test_measures_from_known_corners_by_hand():
    plates = {"L1": {"superior": _corners(0, 20), "inferior": [[0.0, 20.0], [10.0, 20.0]]},
              "L5": {"superior": _corners(60, 5), "inferior": [[3.0, 90.0], [13.0, 90.0]]},
              "S1": {"superior": _corners(100, -20)}}
    px = measures_from_endplates(plates)
    assert px["lordosis_deg"] == pytest.approx(40.0)
    assert px["seg_L5_S1_deg"] == pytest.approx(5.0 + 20.0)
    # L5's lower endplate is flat at y 90, S1's upper one falls anteriorly: heights > 0
    s1_ant_y = 100 + 10 * math.tan(math.radians(20))
    assert px["disc_L5_S1_posterior_px"] > 0 and px["disc_L5_S1_anterior_px"] > 0
    assert px["disc_L5_S1_middle_px"] == pytest.approx(
        (px["disc_L5_S1_posterior_px"] + px["disc_L5_S1_anterior_px"]) / 2)
    # slip: L5's posterior corner 3 px anterior of S1's, along S1's endplate (length 10 / cos)
    e = np.array([10.0, s1_ant_y - 100])
    assert px["slip_L5_S1_pct"] == pytest.approx(float(np.array([3.0, -10.0]) @ e
                                                       / (e @ e) * 100))
    assert px["disc_L5_S1_middle_mm"] is None
    mm = measures_from_endplates(plates, (0.5, 0.5))
    assert mm["disc_L5_S1_middle_mm"] == pytest.approx(px["disc_L5_S1_middle_px"] * 0.5)
    assert mm["lordosis_deg"] == pytest.approx(40.0)


def test_an_image_row_records_the_row_spacing():
    row, _ = image_measures([], (0.15, 0.2))
    assert row["pixel_spacing_mm"] == 0.15 and row["lordosis_deg"] is None
    row, _ = image_measures([], None)
    assert row["pixel_spacing_mm"] is None


def _rect(y0, h=20.0, x0=0.0, w=40.0):
    return np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])


def _column(**tall):
    """L1..L5 and S1 as a straight column of rectangles, 8 px apart (no anterior side)."""
    out, y = [], 0.0
    for lv in ("L1", "L2", "L3", "L4", "L5", "S1"):
        h = tall.get(lv, 20.0)
        out.append((lv, _rect(y, h)))
        y += h + 8
    return out


def test_why_a_level_is_not_measurable_is_said_in_words():
    spine = find_vertebrae(_column())                    # nothing tells anterior from back
    assert spine.vertebrae == {} and spine.anterior is None
    assert spine.unusable == {lv: "anterior side not determined"
                              for lv in ("L1", "L2", "L3", "L4", "L5", "S1")}
    outlines = [o for o in _column() if o[0] != "L4"]
    outlines[0] = ("L1", np.array([[0.0, 0.0], [40.0, 0.0]]))
    outlines.append(("L2", _rect(300)))
    spine = find_vertebrae(outlines)
    assert spine.unusable["L1"] == "fewer than 3 points"
    assert spine.unusable["L2"] == "given 2 times" and spine.unusable["L4"] == "missing"
    assert find_vertebrae([("L1", _rect(0)), ("L9", _rect(30))]).unusable["L2"] == "missing"


def test_a_fused_blob_and_a_gap_make_the_levels_above_uncertain():
    spine = find_vertebrae(_column(L3=48.0))
    assert spine.unusable["L3"] == "fused blob (taller than two bodies' worth)"
    assert spine.unusable["L1"] == spine.unusable["L2"] == "above an uncertain level (L3)"
    gap = [(lv, _rect(y)) for lv, y in (("L1", 0), ("L2", 28), ("L3", 84), ("L4", 112),
                                        ("L5", 140), ("S1", 168))]
    spine = find_vertebrae(gap)
    assert spine.unusable["L2"] == "a vertebra seems missing between L2 and L3"
    assert spine.unusable["L1"] == "above an uncertain level (L2)"
