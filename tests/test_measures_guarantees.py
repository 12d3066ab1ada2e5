"""Clinical measures' tables and grades (converters/spine/measures.py) and the endplates they
are read from (converters/spine/endplates.py), by hand (issue 30's mutation modules measures and
endplates).

Class of defect guarded: ``measures.csv`` with shifted, renamed or unrounded columns, a
missing measure written as something other than an empty cell, a Meyerding grade off at its
boundaries, a measure said to need the wrong levels, and ``not_measurable`` reasons out of
anatomical order; and in the geometry of :func:`find_vertebrae`, on hand-built outlines with
known answers: endplates taken from the wrong hull edge or with the wrong contact tolerance,
the anterior side decided by one cue instead of both, the caudal axis not through the
neighbours' centroids, the gap / fused-blob / 3-point thresholds off at their edge, a spine
without a sacrum or with L5 and S1 alone left unmeasured, and measures that change when the
picture is mirrored, shifted or resampled to square millimetres.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from converters.spine.measures import (COLUMNS, MEASURES, image_measures, measures_csv,
                                       measures_from_endplates, meyerding, reasons, uses)

from converters.spine.endplates import Endplate, Spine, find_vertebrae


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


# --------------------------------------------------------------------------------------------
# geometry by hand: unit vectors, centroids, hull normals, endplates (find_vertebrae's parts)


def test_unit_vectors_and_the_zero_vector():
    from converters.spine.endplates import unit_vector
    assert np.allclose(unit_vector(np.array([0.3, 0.4])), [0.6, 0.8])      # norm under 1 too
    with np.errstate(all="raise"):                                  # no 0/0 NaN
        assert np.array_equal(unit_vector(np.zeros(2)), [0.0, 0.0])


def test_centroid_is_the_area_centroid_or_the_mean_of_a_flat_outline():
    from converters.spine.endplates import _centroid
    # a quadrilateral of area 0.3: its area centroid is not the mean of its vertices
    quad = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.5], [0.0, 0.1]])
    assert np.allclose(_centroid(quad), [11 / 18, 0.1722222], atol=1e-6)
    line = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])              # no area
    got = _centroid(line)
    assert got.shape == (2,) and np.allclose(got, [2.0, 0.0])


def test_hull_normals_point_outward_even_for_a_pixel_sized_outline():
    from converters.spine.endplates import _hull_edges
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    edges = _hull_edges(square)
    assert len(edges) == 4
    for p, q, n in edges:
        assert np.isclose(np.linalg.norm(n), 1.0) and np.isclose(n @ (q - p), 0.0)
        assert n @ ((p + q) / 2 - [0.5, 0.5]) > 0                  # away from the centre


def _rounded_body(x0, y0, w, h, rim=1.5):
    """A body whose superior endplate's rims curve ``rim`` px down over 4 px at each end."""
    return np.array([[x0, y0 + rim], [x0 + 4, y0], [x0 + w - 4, y0], [x0 + w, y0 + rim],
                     [x0 + w, y0 + h], [x0, y0 + h]])


@pytest.mark.parametrize("tol, corners", [(1.0, (4.0, 36.0)), (1.5, (4.0, 36.0)),
                                          (2.0, (0.0, 40.0))])
def test_endplate_contact_is_strictly_within_the_tolerance(tol, corners):
    from converters.spine.endplates import endplate_line
    body = _rounded_body(0.0, 0.0, 40.0, 20.0)
    a, b = endplate_line(body, np.array([0.0, -1.0]), tol)
    xs = sorted([a[0], b[0]])
    assert xs == pytest.approx(corners) and a[1] == pytest.approx(0) == b[1]


def test_endplate_is_the_edge_the_outline_follows_longest():
    from converters.spine.endplates import endplate_line
    # rims 1 px below the top edge, 10 px out: within tol 2 they make the top edge 40 px
    # long, longer than either slanted rim edge (about 30 px of contact)
    body = np.array([[0.0, 1.0], [10.0, 0.0], [30.0, 0.0], [40.0, 1.0], [40.0, 20.0],
                     [0.0, 20.0]])
    a, b = endplate_line(body, np.array([0.0, -1.0]), 2.0)
    assert sorted([tuple(a), tuple(b)]) == [(0.0, 0.0), (40.0, 0.0)]


def test_a_sub_pixel_outline_still_has_endplates():
    from converters.spine.endplates import endplate_line
    tiny = np.array([[0.0, 0.0], [0.8, 0.0], [0.8, 0.5], [0.0, 0.5]])
    a, b = endplate_line(tiny, np.array([0.0, -1.0]), 1.0)
    assert sorted([a[0], b[0]]) == pytest.approx([0.0, 0.8])


# --------------------------------------------------------------------------------------------
# whole spines of rectangles: which side is anterior, thresholds at their edge


def _spine(bulge=0.0, tail=-30.0, h=20.0, rim=0.0, levels=("L1", "L2", "L3", "L4", "L5"),
           sacrum=True):
    """L1..L5 as 40 px wide bodies ``h`` tall, 8 px apart (their superior rims curving
    ``rim`` px down at each end), L2..L4 pushed ``bulge`` px towards +x (0.5, 1, 0.5 x), and
    a sacrum whose flat S1 endplate is 40 px wide and whose tip lies ``tail`` px along x."""
    out, y = [], 0.0
    for lv in ("L1", "L2", "L3", "L4", "L5"):
        if lv in levels:
            x0 = bulge * {"L2": 0.5, "L3": 1.0, "L4": 0.5}.get(lv, 0.0)
            out.append((lv, _rounded_body(x0, y, 40.0, h, rim)))
        y += h + 8
    if sacrum:
        out.append(("S1", np.array([[0, y + rim], [4, y], [36, y], [40, y + rim],
                                    [40 + 0.3 * tail, y + 25], [20 + tail, y + 60],
                                    [0.3 * tail, y + 25]])))
    return out


def _anterior_x(spine) -> float:
    assert spine.anterior is not None and abs(abs(spine.anterior[0]) - 1) < 1e-9
    return float(spine.anterior[0])


@pytest.mark.parametrize("bulge, tail, side", [
    (0.0, -30.0, 1), (0.0, 30.0, -1),       # the sacrum alone: anterior where it is not
    (32.0, 20.0, 1),                        # a strong bulge outweighs a sacrum cue against it
    (3.0, 30.0, -1),                        # a sacrum cue outweighs a faint bulge against it
])
def test_the_anterior_side_adds_the_bulge_and_the_sacrum_cues(bulge, tail, side):
    # cues by hand: the bulge is the middle bodies' mean offset from the chord L1 - S1 in
    # endplate depths (32 px: 0.4, 3 px: 0.0375); the sacrum's, its centroid's offset from
    # the S1 endplate's midpoint in endplate lengths (tail 30: 0.23, tail 20: about 0.15)
    spine = find_vertebrae(_spine(bulge, tail))
    assert _anterior_x(spine) == side and spine.unusable == {}
    assert np.allclose(spine.up, [0.0, -1.0])
    for lv, v in spine.vertebrae.items():
        assert v.level == lv
        assert (v.superior.anterior[0] - v.superior.posterior[0]) * side == pytest.approx(40)


@pytest.mark.parametrize("bulge, tail", [(32.0, 30.0), (-32.0, -30.0), (24.0, 20.0)])
def test_cues_of_like_strength_against_each_other_leave_the_side_unguessed(bulge, tail):
    # bulge 0.4 against a sacrum cue of 0.23 (tail 30), 0.3 against 0.15: neither outweighs
    # the other twice; a guess would turn the frame, and every angle's sign, the wrong way
    spine = find_vertebrae(_spine(bulge, tail))
    assert spine.vertebrae == {} and spine.anterior is None
    assert set(spine.unusable.values()) == {
        "anterior side uncertain (the curve and the sacrum point to opposite sides)"}


def test_each_endplate_runs_posterior_to_anterior_at_any_scale():
    # the same spine at 1/50 scale: bodies 0.8 px deep, whose endplates are shorter than a
    # pixel (a coarse mask) still run from the back to the front
    spine = find_vertebrae([(lv, points * 0.02) for lv, points in _spine(0.0, -30.0)])
    assert spine.unusable == {} and spine.anterior[0] > 0.99
    for v in spine.vertebrae.values():
        for plate in (v.superior, v.inferior):
            if plate is not None:
                assert 0 < np.subtract(plate.anterior, plate.posterior) @ spine.anterior < 1


def test_a_lordotic_spine_without_a_sacrum_is_measured_between_its_bodies():
    spine = find_vertebrae(_spine(bulge=16.0, sacrum=False))
    assert spine.unusable == {"S1": "missing"} and _anterior_x(spine) == 1
    assert sorted(spine.vertebrae) == ["L1", "L2", "L3", "L4", "L5"]
    row, _ = image_measures(_spine(bulge=16.0, sacrum=False))
    assert row["seg_L2_L3_deg"] == pytest.approx(0.0) and row["lordosis_deg"] is None
    assert row["disc_L2_L3_middle_px"] == pytest.approx(8.0)


def test_l5_and_s1_alone_are_enough_for_their_measures():
    outlines = _spine(levels=("L5",))
    spine = find_vertebrae(outlines)
    assert sorted(spine.vertebrae) == ["L5", "S1"] and _anterior_x(spine) == 1
    assert spine.vertebrae["S1"].superior == Endplate((0.0, 140.0), (40.0, 140.0))
    assert spine.vertebrae["L5"].inferior == Endplate((0.0, 132.0), (40.0, 132.0))
    row, _ = image_measures(outlines)
    assert row["disc_L5_S1_anterior_px"] == pytest.approx(8.0)
    assert row["seg_L5_S1_deg"] == pytest.approx(0.0) and row["slip_L5_S1_pct"] == 0.0
    assert row["not_measurable"] == "L1: missing; L2: missing; L3: missing; L4: missing"


@pytest.mark.parametrize("h, rim_in", [(20.0, False), (40.0, True)])
def test_endplate_contact_tolerance_is_5_percent_of_the_body_height(h, rim_in):
    # rims 1.5 px below the line: within 5 % of a 40 px body (2 px), not of a 20 px one
    # (1 px); the sacrum's tolerance is that of the median lumbar body
    spine = find_vertebrae(_spine(h=h, rim=1.5))
    assert spine.unusable == {} and _anterior_x(spine) == 1
    want = (0.0, 40.0) if rim_in else (4.0, 36.0)
    for lv in ("L1", "L3", "L5", "S1"):
        sup = spine.vertebrae[lv].superior
        assert (sup.posterior[0], sup.anterior[0]) == pytest.approx(want), lv


def test_a_three_point_outline_is_usable_and_a_spike_has_no_endplate():
    outlines = dict(_spine())
    outlines["L1"] = np.array([[0.0, 0.0], [40.0, 0.0], [20.0, 20.0]])   # 3 points
    outlines["L3"] = np.array([[12.0, 84.0], [28.0, 84.0], [20.0, 56.0]])  # a spike
    spine = find_vertebrae(list(outlines.items()))
    assert spine.vertebrae["L1"].superior == Endplate((0.0, 0.0), (40.0, 0.0))
    assert spine.unusable == {"L3": "no endplate found"}


def _stack(ys, h=12.0, tall=None):
    tall = tall or {}
    return [(lv, _rect(y, tall.get(lv, h), w=24.0)) for lv, y in zip(("L1", "L2", "L3", "L4",
                                                                        "L5"), ys)]


@pytest.mark.parametrize("step, flagged", [(32.0, False), (32.5, True)])
def test_a_gap_is_a_step_over_1_6_median_steps(step, flagged):
    spine = find_vertebrae(_stack([0.0, step, step + 20, step + 40, step + 60]))
    gap = "a vertebra seems missing between L1 and L2"
    assert (spine.unusable["L1"] == gap) == flagged


def test_two_steps_are_enough_to_find_a_gap():
    spine = find_vertebrae(_stack([0.0, 28.0, 178.0]))
    assert spine.unusable["L2"] == "a vertebra seems missing between L2 and L3"
    assert spine.unusable["L1"] == "above an uncertain level (L2)"


@pytest.mark.parametrize("tall, fused", [(32.0, False), (32.5, True)])
def test_a_fused_blob_is_taller_than_1_6_median_bodies(tall, fused):
    spine = find_vertebrae(_column(L3=tall))
    assert spine.unusable.get("L3", "").startswith("fused") == fused


def test_three_lumbar_bodies_are_enough_to_find_a_fused_one():
    outlines = [o for o in _column(L3=48.0) if o[0] in ("L3", "L4", "L5", "S1")]
    spine = find_vertebrae(outlines)
    assert spine.unusable["L3"] == "fused blob (taller than two bodies' worth)"


@pytest.mark.parametrize("move", ["mirrored", "shifted"])
def test_known_corners_measure_the_same_facing_left_or_anywhere_in_the_picture(move):
    plates = {"L1": {"superior": _corners(0, 20), "inferior": [[0.0, 20.0], [10.0, 20.0]]},
              "L5": {"superior": _corners(60, 5), "inferior": [[3.0, 90.0], [13.0, 90.0]]},
              "S1": {"superior": _corners(100, -20)}}

    def moved(p):
        return [4000.0 - p[0], p[1]] if move == "mirrored" else [p[0] + 4000.0, p[1] + 40.0]

    other = {lv: {side: [moved(p) for p in pts] for side, pts in sides.items()}
             for lv, sides in plates.items()}
    want, got = measures_from_endplates(plates), measures_from_endplates(other)
    assert want["disc_L5_S1_posterior_px"] > 0 and want["lordosis_deg"] == pytest.approx(40)
    for col in MEASURES:
        assert got[col] == pytest.approx(want[col], abs=1e-9), col


def test_the_axis_at_a_body_runs_through_its_neighbours_centroids():
    # L1 and L5 pushed 40 px anteriorly: the axis at L2 (L1 -> L3), at L4 (L3 -> L5) and at
    # L5 (L4 -> L5) leans, at L3 (L2 -> L4) it does not; a leaning axis makes a body taller
    # along it (about 39 px), so the 1.5 px rims fall within its tolerance (5 %: about 2 px)
    outlines = dict(_spine(h=20.0, rim=1.5))
    for lv in ("L1", "L5"):
        outlines[lv] = outlines[lv] + [40.0, 0.0]
    spine = find_vertebrae(list(outlines.items()))
    assert spine.unusable == {}
    width = {lv: abs(v.superior.anterior[0] - v.superior.posterior[0])
             for lv, v in spine.vertebrae.items() if lv != "S1"}
    assert width == pytest.approx({"L1": 40, "L2": 40, "L3": 32, "L4": 40, "L5": 40})


def test_millimetres_are_the_measures_of_the_picture_resampled_to_square_pixels():
    plates = {"L1": {"superior": _corners(0, 20), "inferior": [[0.0, 20.0], [10.0, 20.0]]},
              "L5": {"superior": _corners(60, 5), "inferior": [[3.0, 90.0], [13.0, 90.0]]},
              "S1": {"superior": _corners(100, -20)}}
    for turn in (0.0, 50.0, 130.0):
        c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
        turned = {lv: {k: [[c * x - s * y, s * x + c * y] for x, y in pts]
                       for k, pts in sides.items()} for lv, sides in plates.items()}
        spacing = (0.5, 3.0)                                   # row, column (mm)
        square = {lv: {k: [[x * spacing[1], y * spacing[0]] for x, y in pts]
                       for k, pts in sides.items()} for lv, sides in turned.items()}
        mm, want = measures_from_endplates(turned, spacing), measures_from_endplates(square)
        for col in MEASURES:
            if col.endswith("_mm"):
                assert mm[col] == pytest.approx(want[col[:-3] + "_px"]), (turn, col)
            elif not col.endswith("_px"):
                assert mm[col] == pytest.approx(want[col]), (turn, col)
