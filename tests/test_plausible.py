"""Plausibility of the endplates measured (converters/spine/plausible.py): a segmental angle no
lumbar segment shows, and a disc whose two endplates are one edge, withhold both levels of the
pair with the reason; bodies overlapping in projection and ordinary spines are measured."""
from __future__ import annotations

import math

import numpy as np
import pytest

from converters.spine.endplates import find_vertebrae
from converters.spine.measures import image_measures
from converters.spine.plausible import implausible, withhold_implausible
from converters.spine.refine import MeasuresConfig

LUMBAR = ["L1", "L2", "L3", "L4", "L5"]
DEPTH, HEIGHT = 60.0, 40.0


def _rect(posterior_superior: np.ndarray, deg: float) -> np.ndarray:
    """A body DEPTH x HEIGHT from its posterior-superior corner, its endplates tilted ``deg``
    (anterior end up), anterior = +x, y down."""
    t = math.radians(deg)
    u, v = np.array([math.cos(t), -math.sin(t)]), np.array([math.sin(t), math.cos(t)])
    p = np.asarray(posterior_superior, float)
    return np.array([p, p + DEPTH * u, p + DEPTH * u + HEIGHT * v, p + HEIGHT * v])


def _spine(last_gap: float = 12.0, sacral: float = -20.0, s1_drop: float | None = None):
    """L1-L5 on a lordotic arc (tilts 14 .. -16 deg, 12 px discs), the sacrum's endplate
    ``last_gap`` px under L5's posterior-inferior corner, tilted ``sacral`` (or, with
    ``s1_drop``, parallel to L5's, its anterior end that many px lower still)."""
    tilts = (14.0, 7.0, 0.0, -8.0, -16.0)
    outlines, y = [], 40.0
    for k, t in enumerate(tilts):
        x = 150 + 18 * math.sin(math.pi * (k + 0.5) / 5.5)          # the lordotic bulge
        outlines.append((LUMBAR[k], _rect((x, y), t)))
        y += HEIGHT + 12
    l5 = outlines[-1][1]
    p = l5[3] + np.array([0.0, last_gap])
    d = l5[2] - l5[3]
    if s1_drop is not None:
        a = p + d + np.array([0.0, s1_drop])
    else:
        t = math.radians(sacral)
        a = p + DEPTH * np.array([math.cos(t), -math.sin(t)])
    down = np.array([-(a - p)[1], (a - p)[0]]) / np.linalg.norm(a - p)
    down = down if down[1] > 0 else -down
    sacrum = np.array([p, a, a + 50 * down - 15 * (a - p) / DEPTH, p + 110 * down - 20 *
                       (a - p) / DEPTH, p + 45 * down - 10 * (a - p) / DEPTH])
    outlines.append(("S1", sacrum))
    return outlines


def test_an_ordinary_spine_passes_every_check():
    row, spine = image_measures(_spine())
    assert row["not_measurable"] == "" and implausible(spine, MeasuresConfig()) == {}
    assert row["lordosis_deg"] == pytest.approx(14 + 20, abs=0.5)
    assert row["seg_L5_S1_deg"] == pytest.approx(-16 + 20, abs=0.5)


def test_a_segment_beyond_the_limit_withholds_both_levels_with_the_reason():
    """L5/S1 at 59 deg (a sacrum tilted 75 deg): L5 and S1 withheld, so the lordosis and every
    measure of L4/L5 and L5/S1 are empty; L1-L4's are made. The limit is the config's."""
    outlines = _spine(sacral=-75.0)
    row, spine = image_measures(outlines)
    assert set(spine.unusable) == {"L5", "S1"}
    assert "L5/S1 segmental angle 59 deg, beyond +-45" in spine.unusable["S1"]
    assert row["lordosis_deg"] is None and row["seg_L4_L5_deg"] is None
    assert row["disc_L4_L5_middle_px"] is None and row["body_L5_anterior_px"] is None
    assert row["seg_L3_L4_deg"] == pytest.approx(8, abs=0.5)
    assert row["body_L4_anterior_px"] == pytest.approx(HEIGHT, abs=0.5)
    assert "L5: L5/S1 segmental angle" in row["not_measurable"]
    loose, _ = image_measures(outlines, checks=MeasuresConfig(max_segment_deg=60))
    assert loose["not_measurable"] == "" and loose["lordosis_deg"] == pytest.approx(89, abs=0.5)
    strict, spine = image_measures(_spine(), checks=MeasuresConfig(max_segment_deg=7.5))
    # segments 7, 7, 8, 8, 4 deg: L3/L4 and L4/L5 fail, so L3, L4 and L5 are withheld
    assert set(spine.unusable) == {"L3", "L4", "L5"}
    assert "L3/L4" in spine.unusable["L4"] and "L4/L5" in spine.unusable["L4"]
    assert strict["seg_L1_L2_deg"] == pytest.approx(7, abs=0.5)


@pytest.mark.parametrize("gap, withheld", [(0.0, True), (1.5, True), (-1.5, True),
                                           (3.5, False), (12.0, False)])
def test_a_disc_whose_endplates_are_one_edge_is_not_measured(gap, withheld):
    """The sacrum's endplate parallel to L5's at ``gap`` px (the bodies 40 px high: the limit
    6 % of it, 2.4 px): within it either way, one edge was taken for both; beyond, a disc."""
    row, spine = image_measures(_spine(last_gap=gap, s1_drop=0.0))
    if withheld:
        assert set(spine.unusable) == {"L5", "S1"}, spine.unusable
        assert "L5/S1 disc not seen" in spine.unusable["L5"]
        assert row["lordosis_deg"] is None and row["disc_L5_S1_middle_px"] is None
        assert row["seg_L2_L3_deg"] is not None
    else:
        assert row["not_measurable"] == ""
        assert row["disc_L5_S1_middle_px"] == pytest.approx(gap, abs=0.5)
    off, _ = image_measures(_spine(last_gap=gap, s1_drop=0.0),
                            checks=MeasuresConfig(min_disc_ratio=0.0))
    assert off["not_measurable"] == "" or gap == 0.0


def test_bodies_overlapping_in_projection_are_measured():
    """S1's posterior corner 5 px above L5's, its anterior corner 4 px below: the bodies
    overlap in projection (a negative posterior height), not one edge taken for both."""
    row, spine = image_measures(_spine(last_gap=-5.0, s1_drop=9.0))
    assert row["not_measurable"] == "", spine.unusable
    assert row["disc_L5_S1_posterior_px"] < -3 and row["disc_L5_S1_anterior_px"] > 3


def test_the_gate_keeps_the_fits_and_leaves_a_passing_spine_alone():
    spine = find_vertebrae(_spine(sacral=-75.0))
    spine.fits["S1"] = {"superior": "fit"}           # refine_spine's record, kept as it is
    out = withhold_implausible(spine, MeasuresConfig())
    assert "S1" not in out.vertebrae and out.fits["S1"] == {"superior": "fit"}
    assert "S1" in spine.vertebrae                   # the input is not changed
    fine = find_vertebrae(_spine())
    assert withhold_implausible(fine, MeasuresConfig()) is fine
