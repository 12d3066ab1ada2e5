"""Plausibility of the endplates measured (converters/spine/plausible.py): a segmental angle no
lumbar segment shows, and a disc whose two endplates found on the image are one edge, withhold
the levels with the reason; checked across a level that is missing or withheld, in physical
space; readers' lines through a collapsed disc and ordinary spines are measured."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from converters.spine.endplates import find_vertebrae
from converters.spine.measures import image_measures
from converters.spine.plausible import implausible, look_below, withhold_implausible
from converters.spine.refine import Fit, MeasuresConfig, refine_spine
from train.evaluation.evaluate import endplates_record

LUMBAR = ["L1", "L2", "L3", "L4", "L5"]
DEPTH, HEIGHT = 60.0, 40.0
TILTS = (14.0, 7.0, 0.0, -8.0, -16.0)      # segments 7, 7, 8, 8 deg; L5/S1 -16 - sacral


def _rect(posterior_superior, deg: float) -> np.ndarray:
    """A body DEPTH x HEIGHT from its posterior-superior corner, its endplates tilted ``deg``
    (anterior end up), anterior = +x, y down: posterior-superior, anterior-superior,
    anterior-inferior, posterior-inferior."""
    t = math.radians(deg)
    u, v = np.array([math.cos(t), -math.sin(t)]), np.array([math.sin(t), math.cos(t)])
    p = np.asarray(posterior_superior, float)
    return np.array([p, p + DEPTH * u, p + DEPTH * u + HEIGHT * v, p + HEIGHT * v])


def _spine(last_gap: float = 12.0, sacral: float = -20.0, s1_drop: float | None = None):
    """L1-L5 on a lordotic arc (12 px discs), the sacrum's endplate ``last_gap`` px under L5's
    posterior-inferior corner, tilted ``sacral`` (or, with ``s1_drop``, parallel to L5's, its
    anterior end that many px lower still)."""
    outlines, y = [], 40.0
    for k, t in enumerate(TILTS):
        x = 150 + 18 * math.sin(math.pi * (k + 0.5) / 5.5)          # the lordotic bulge
        outlines.append((LUMBAR[k], _rect((x, y), t)))
        y += HEIGHT + 12
    l5 = outlines[-1][1]
    p = l5[3] + np.array([0.0, last_gap])
    if s1_drop is not None:
        a = p + (l5[2] - l5[3]) + np.array([0.0, s1_drop])
    else:
        t = math.radians(sacral)
        a = p + DEPTH * np.array([math.cos(t), -math.sin(t)])
    e = (a - p) / np.linalg.norm(a - p)
    down = np.array([-e[1], e[0]]) if e[0] > 0 else np.array([e[1], -e[0]])
    sacrum = np.array([p, a, a + 50 * down - 15 * e, p + 110 * down - 20 * e,
                       p + 45 * down - 10 * e])
    outlines.append(("S1", sacrum))
    return outlines


def _without(outlines, level):
    return [(lv, p) for lv, p in outlines if lv != level]


def _found_on_image(spine):
    """The spine as if every endplate had been refined onto itself (seen on the image)."""
    for lv, vt in spine.vertebrae.items():
        spine.fits[lv] = {side: Fit(plate, plate, 1.0) for side, plate in
                          (("superior", vt.superior), ("inferior", vt.inferior)) if plate}
    return spine


def _drawn(outlines, shape=(420, 400), k=8) -> np.ndarray:
    """The outlines drawn as bone (a 2 px cortex brighter than the inside) on soft tissue, at
    ``k`` x and averaged down (sub-pixel edges), blurred and noisy."""
    big = np.full((shape[0] * k, shape[1] * k), 300.0, np.float32)
    for _, pts in outlines:
        cv2.fillPoly(big, [np.rint(pts * k - 0.5).astype(np.int32)], 1500.0)
        c = pts.mean(axis=0)
        inner = c + (pts - c) * (1 - 2.0 / (HEIGHT / 2))
        cv2.fillPoly(big, [np.rint(inner * k - 0.5).astype(np.int32)], 1100.0)
    img = cv2.resize(big, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    return img + np.random.default_rng(0).normal(0, 10, img.shape).astype(np.float32)


def test_an_ordinary_spine_passes_every_check():
    row, spine = image_measures(_spine())
    assert row["not_measurable"] == "" and implausible(spine, MeasuresConfig()) == {}
    assert row["lordosis_deg"] == pytest.approx(14 + 20, abs=0.5)
    assert row["seg_L5_S1_deg"] == pytest.approx(-16 + 20, abs=0.5)


def test_a_segment_beyond_the_limit_withholds_both_levels_with_the_reason():
    """L5/S1 at 59 deg (a sacrum tilted 75 deg): L5 and S1 withheld, so the lordosis and every
    measure of L4/L5 and L5/S1 are empty; L1-L4's are made. The limit is the config's; 180
    turns the check off."""
    outlines = _spine(sacral=-75.0)
    row, spine = image_measures(outlines)
    assert set(spine.unusable) == {"L5", "S1"}
    assert spine.unusable["S1"] == ("L5/S1 segmental angle 59.0 deg, beyond +-45 (an outline or "
                                    "an edge is wrong)")
    assert row["lordosis_deg"] is None and row["seg_L4_L5_deg"] is None
    assert row["disc_L4_L5_middle_px"] is None and row["body_L5_anterior_px"] is None
    assert row["seg_L3_L4_deg"] == pytest.approx(8, abs=0.5)
    assert row["body_L4_anterior_px"] == pytest.approx(HEIGHT, abs=0.5)
    assert "L5: L5/S1 segmental angle" in row["not_measurable"]
    for off in (60.0, 180.0):
        loose, _ = image_measures(outlines, checks=MeasuresConfig(max_segment_deg=off))
        assert loose["not_measurable"] == "" and loose["lordosis_deg"] == pytest.approx(89, abs=0.5)
    strict, spine = image_measures(_spine(), checks=MeasuresConfig(max_segment_deg=7.5))
    # segments 7, 7, 8, 8, 4 deg: L3/L4 and L4/L5 fail, so L3, L4 and L5 are withheld; L4's
    # reason names both, in one cell entry (the cell's separator is never inside a reason)
    assert set(spine.unusable) == {"L3", "L4", "L5"}
    assert spine.segments == ["L3/L4", "L4/L5"]                 # cranial first
    assert " and L4/L5 segmental angle" in spine.unusable["L4"]
    assert strict["not_measurable"].count(";") == 2
    assert strict["seg_L1_L2_deg"] == pytest.approx(7, abs=0.5)


@pytest.mark.parametrize("missing", ["L5", "L5 twice"])
def test_a_wrong_sacrum_is_checked_across_a_missing_level(missing):
    """L5 missing (or given twice): S1 is checked against L4 over two segments, twice the
    limit (here 30 deg a segment): L4/S1 at 37 deg passes, at 67 deg it is withheld with L4,
    and the lordosis is then not made."""
    def outlines(sacral):
        spine = _spine(sacral=sacral)
        if missing == "L5":
            return _without(spine, "L5")
        return spine + [("L5", dict(spine)["L5"] + 1.0)]

    cfg = MeasuresConfig(max_segment_deg=30.0)
    row, spine = image_measures(outlines(-45.0), checks=cfg)
    assert set(spine.unusable) == {"L5"} and row["lordosis_deg"] == pytest.approx(59, abs=0.5)
    row, spine = image_measures(outlines(-75.0), checks=cfg)
    assert spine.unusable["S1"] == spine.unusable["L4"] == (
        "L4/S1 segmental angle 67.0 deg, beyond +-60 over 2 segments (an outline or an edge is "
        "wrong)")
    assert row["lordosis_deg"] is None and row["seg_L2_L3_deg"] == pytest.approx(7, abs=0.5)
    assert spine.segments == ["L4/S1"]          # the pair that failed, as propose names it


def _refined_but(outlines, level, seen=()):
    """The spine as refine_spine leaves it when every edge is found where the outline says
    but ``level``'s: of it only the sides in ``seen`` (refined 1 px deeper), the level
    withheld."""
    spine = _found_on_image(find_vertebrae(outlines))
    vt = spine.vertebrae.pop(level)
    for side in ("superior", "inferior"):
        plate = getattr(vt, side)
        moved = type(plate)(*(tuple(np.add(p, (0.0, 1.0 if side == "superior" else -1.0)))
                              for p in (plate.posterior, plate.anterior)))
        spine.fits[level][side] = (Fit(plate, moved, 1.0) if side in seen else
                                   Fit(plate, None, 0.1, reason="not seen"))
    spine.unusable[level] = "inferior endplate: edge seen along 10 % of the endplate"
    return spine


def test_a_level_the_refinement_withheld_takes_part_with_what_it_found():
    """L5's inferior edge not seen (L5 withheld), its superior found: a steep sacrum (L5/S1 54
    deg) is still checked against L5's superior edge, and withheld; with neither of L5's
    edges found (an outline the image contradicts), the sacrum is checked against L4 over two
    segments (62 deg, within 90) and measured, whatever L5's outline says."""
    outlines = _spine(sacral=-70.0)
    seen = withhold_implausible(_refined_but(outlines, "L5", seen=("superior",)),
                                MeasuresConfig())
    assert seen.unusable["S1"].startswith("L5/S1 segmental angle 54.")
    assert set(seen.withheld) == {"S1"}                  # L5 was withheld already
    nonsense = [(lv, p if lv != "L5" else p.mean(0) + (p - p.mean(0)) @ [[0.5, 0.6], [-0.6, 0.5]])
                for lv, p in outlines]
    blind = withhold_implausible(_refined_but(nonsense, "L5"), MeasuresConfig())
    assert "S1" in blind.vertebrae and set(blind.unusable) == {"L5"}
    good = withhold_implausible(_refined_but(_spine(), "L5"), MeasuresConfig())
    assert "S1" in good.vertebrae


def test_angles_are_checked_in_physical_space():
    """Pixels 0.08 mm tall, 0.1 mm wide (the picture 1.25 times as tall as the spine): an
    L5/S1 angle of 44 deg in millimetres (45.5 on the pixel grid) is measured; the reason,
    where given, says the physical angle the table says."""
    tall = [(lv, p * [1.0, 1.25]) for lv, p in _spine(sacral=-60.0)]
    row, spine = image_measures(tall, (0.08, 0.1))
    assert row["not_measurable"] == "" and row["seg_L5_S1_deg"] == pytest.approx(44, abs=0.1)
    assert "segmental angle 45.5 deg" in image_measures(tall)[1].unusable["S1"]   # the grid's
    row, spine = image_measures(tall, (0.08, 0.1), checks=MeasuresConfig(max_segment_deg=40))
    assert "L5/S1 segmental angle 44.0 deg, beyond +-40" in spine.unusable["S1"]


@pytest.mark.parametrize("gap, drop, withheld", [(0.0, 0.0, True), (1.5, 0.0, True),
                                                 (-1.5, 0.0, True), (-1.5, 2.0, True),
                                                 (3.5, 0.0, False), (-4.0, 9.0, False),
                                                 (12.0, 0.0, False)])
def test_a_disc_whose_endplates_found_on_the_image_are_one_edge(gap, drop, withheld):
    """The sacrum's endplate at ``gap`` px under L5's posterior corner, ``drop`` px more at
    the anterior (bodies 40 px high: the limit 6 % of it, 2.4 px), as found on the image:
    within the limit all along, one edge was taken for both; beyond it at any point (a disc,
    or bodies crossing in projection), measured. The millimetre form says millimetres."""
    spine = _found_on_image(find_vertebrae(_spine(last_gap=gap, s1_drop=drop)))
    bad = implausible(spine, MeasuresConfig())
    if withheld:
        assert set(bad) == {"L5", "S1"}
        assert bad["L5"].startswith("L5/S1 disc not seen (its endplates within ")
        assert " px of each other along their length, 6 % of a body's height" in bad["L5"]
        assert " mm of each other" in implausible(spine, MeasuresConfig(), (0.5, 0.5))["S1"]
    else:
        assert bad == {}
    assert implausible(spine, MeasuresConfig(min_disc_ratio=0.0)) == {}     # 0: off


def test_a_collapsed_disc_a_reader_drew_is_measured():
    """Lines not found on the image (a reader's polygons, an unrefined outline): a disc drawn
    collapsed is what was drawn, and is measured (negative heights and all)."""
    row, spine = image_measures(_spine(last_gap=-1.0, s1_drop=1.5))
    assert row["not_measurable"] == "" and row["disc_L5_S1_posterior_px"] < 0


def test_on_a_drawn_radiograph_a_disc_not_seen_is_withheld_and_a_disc_is_measured():
    """Through the refinement (``min_disc_ratio`` 0.1: within 4 px): S1 drawn 2 px under L5
    (both edges found, 2.7 px apart) is withheld with L5; 12 px under it, every measure is
    made."""
    cfg = MeasuresConfig(min_disc_ratio=0.1)
    for gap, withheld in ((2.0, True), (12.0, False)):
        outlines = _spine(last_gap=gap, s1_drop=0.0)
        row, spine = image_measures(outlines, refine=cfg, image=_drawn(outlines))
        if withheld:
            assert "L5/S1 disc not seen" in spine.unusable.get("S1", ""), spine.unusable
            assert row["lordosis_deg"] is None and set(spine.withheld) == {"L5", "S1"}
        else:
            assert row["not_measurable"] == "", spine.unusable
            assert row["disc_L5_S1_middle_px"] == pytest.approx(gap, abs=1.0)


def test_the_withheld_levels_keep_their_endplates_and_the_input_is_left_alone():
    """The gate returns a new spine: the withheld levels' endplates in ``withheld`` and in
    endplates.json marked with the reason, its fits a copy; a spine that passes is returned
    as it is. The image's confidence is that of the levels still measured."""
    spine = _found_on_image(find_vertebrae(_spine(sacral=-75.0)))
    spine.fits["S1"]["superior"] = Fit(spine.vertebrae["S1"].superior,
                                       spine.vertebrae["S1"].superior, 0.5)
    out = withhold_implausible(spine, MeasuresConfig())
    assert set(out.withheld) == {"L5", "S1"} and "S1" in spine.vertebrae
    assert out.fits == spine.fits and out.fits is not spine.fits
    out.fits["L1"] = {}
    assert spine.fits["L1"]                                # the input's fits untouched
    record = endplates_record(out)
    assert record["S1"]["superior"]["withheld"].startswith("L5/S1 segmental angle")
    assert len(record["S1"]["superior"]["endplate"]) == 2 and "withheld" not in record["L4"]
    from converters.spine.refine import confidence
    assert confidence(spine) == 0.5 and confidence(out) == 1.0
    fine = find_vertebrae(_spine())
    assert withhold_implausible(fine, MeasuresConfig()) is fine


def test_propose_leaves_an_implausible_segment_unsnapped_and_ranks_it_up():
    """propose on a drawn spine whose sacrum outline is steep (L5/S1 54 deg) while the image
    shows the same: L5's and S1's corners stay as the model drew them, the levels and their
    reason are handed on, and the review order puts the image up by 1 with the segment
    named; the same spine with a plausible sacrum is snapped and not flagged."""
    from converters.annotations.proposals import (Proposal, ProposedRegion, review,
                                                  snap_endplates)

    def proposal(outlines):
        regions = [ProposedRegion("sacrum" if lv == "S1" else "lumbar",
                                  [int(round(x)) for x in p[:, 0]],
                                  [int(round(y)) + 2 for y in p[:, 1]], level=lv)
                   for lv, p in outlines]
        return Proposal("a.png", 1, 400, 420, regions)

    for sacral, flagged in ((-70.0, True), (-20.0, False)):
        outlines = _spine(sacral=sacral)
        prop = proposal(outlines)
        drawn = {r.level: (list(r.xs), list(r.ys)) for r in prop.regions}
        moved = snap_endplates(prop.regions, _drawn(outlines), MeasuresConfig(),
                               implausible=prop.implausible, segments=prop.segments)
        review(prop, overlapping=[], disagreement=None, instance_model=False)
        snapped = {r.level for r in prop.regions if (r.xs, r.ys) != drawn[r.level]}
        if flagged:
            assert set(prop.implausible) == {"L5", "S1"}
            assert "L5/S1 segmental angle" in prop.implausible["S1"]
            assert snapped == {"L1", "L2", "L3", "L4"} and moved > 0
            assert prop.score == 1.0 and prop.segments == ["L5/S1"]
            assert prop.reasons == ["a segment no spine shows at L5/S1"]
        else:
            assert prop.implausible == {} and prop.score == 0.0 and prop.reasons == []
            assert snapped == {"L1", "L2", "L3", "L4", "L5", "S1"}


def _grown(outlines):
    """The outlines with the sacrum's grown over the L5/S1 disc: its upper side on L5's
    inferior endplate (a model's mask filling the disc, its prior on L5's edge)."""
    l5 = dict(outlines)["L5"]
    return [(lv, np.vstack([l5[3], l5[2], p[2:]]) if lv == "S1" else p) for lv, p in outlines]


def test_a_disc_not_seen_gets_a_second_look_a_disc_below():
    """The radiograph shows L5/S1's disc (12 px) but the sacrum's outline is grown over it, its
    prior on L5's edge: the first search finds L5's edge for both, and the second look, a
    disc's height (the image's other discs: 12 px) below, finds the sacrum's own within a
    pixel and a degree; every measure is made. With no sacrum on the image (nothing a disc
    below), the second look finds no edge and the levels stay withheld as before."""
    cfg = MeasuresConfig(min_disc_ratio=0.1)
    truth = _spine()
    prior = _grown(truth)
    first = withhold_implausible(refine_spine(find_vertebrae(prior), _drawn(truth), cfg), cfg)
    assert "L5/S1 disc not seen" in first.unusable["S1"]            # the first look's failure
    row, spine = image_measures(prior, refine=cfg, image=_drawn(truth))
    assert row["not_measurable"] == "", spine.unusable
    true_row, true_spine = image_measures(truth)
    assert row["lordosis_deg"] == pytest.approx(true_row["lordosis_deg"], abs=1.0)
    assert row["disc_L5_S1_middle_px"] == pytest.approx(true_row["disc_L5_S1_middle_px"],
                                                        abs=1.0)
    found, true_s1 = spine.vertebrae["S1"].superior, true_spine.vertebrae["S1"].superior
    assert np.abs(np.subtract(found.midpoint, true_s1.midpoint)).max() <= 1.0
    assert spine.fits["S1"]["superior"].prior == find_vertebrae(prior).vertebrae["S1"].superior
    blank = _drawn(_without(truth, "S1"))
    row, spine = image_measures(prior, refine=cfg, image=blank)
    assert row["lordosis_deg"] is None and "S1" in spine.unusable, spine.unusable


def _brighter(image: np.ndarray, outline: np.ndarray, depth: tuple[float, float],
              gain: float = 1.5, k: int = 8) -> np.ndarray:
    """``image`` with a band ``depth`` px under the body's superior side made ``gain`` x
    brighter (a sclerotic zone under an endplate: an edge inside the body)."""
    ps, as_, _, pi = outline
    v = (pi - ps) / np.linalg.norm(pi - ps)
    band = np.array([ps + depth[0] * v, as_ + depth[0] * v, as_ + depth[1] * v, ps + depth[1] * v])
    h, w = image.shape
    big = np.zeros((h * k, w * k), np.uint8)
    cv2.fillPoly(big, [np.rint(band * k - 0.5).astype(np.int32)], 1)
    share = cv2.resize(big.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return image * (1 + (gain - 1) * share)


def test_a_second_look_that_makes_no_spine_is_not_kept():
    """The second look's edge is kept only where the disc it opens is apart all along and both
    bodies of the pair measure a body: L4's outline grown over the L4/L5 disc (its lower side on
    L5's upper edge) and a sclerotic band inside L5, whose edge a disc below would read L4 at
    1.5 bodies and L5 at 0.7: withheld, as without the second look; a border (gas, a crest)
    crossing under L5 at 30 deg where no sacrum is seen would open a disc that crosses L5's
    endplate: withheld too."""
    cfg = MeasuresConfig(min_disc_ratio=0.1)
    truth = _spine()
    l5 = dict(truth)["L5"]
    grown = [(lv, np.vstack([p[0], p[1], l5[1], l5[0]]) if lv == "L4" else p)
             for lv, p in truth]
    for depth in ((10, 14), (12, 16), (14, 18)):
        image = _brighter(_drawn(truth), l5, depth)
        first = withhold_implausible(refine_spine(find_vertebrae(grown), image, cfg), cfg)
        assert "L4/L5 disc not seen" in first.unusable["L5"]
        row, spine = image_measures(grown, refine=cfg, image=image)
        assert "L4/L5 disc not seen" in spine.unusable["L5"], (depth, spine.unusable)
        assert row["body_L4_anterior_px"] is None and row["disc_L4_L5_middle_px"] is None
    blank = _drawn(_without(truth, "S1"))
    first = refine_spine(find_vertebrae(_grown(truth)), blank, cfg)
    edge = first.vertebrae["L5"].inferior
    t = math.radians(30)
    along = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ \
        (edge.vector / np.linalg.norm(edge.vector))
    down = -first.up
    yy, xx = np.mgrid[0:blank.shape[0], 0:blank.shape[1]] + 0.5
    rel = np.stack([xx, yy], -1) - (edge.midpoint + 12 * down)
    off = rel @ (np.array([-along[1], along[0]]) * np.sign(np.array([-along[1], along[0]]) @ down))
    strip = (off < 0) & (off > -14) & (np.abs(rel @ along) < 40)
    crossed = np.where(strip, blank * 0.35, blank)
    row, spine = image_measures(_grown(truth), refine=cfg, image=crossed)
    assert row["lordosis_deg"] is None and "S1" in spine.unusable, spine.unusable


@pytest.mark.parametrize("spacing", [None, (0.3, 0.1), (0.5, 0.1), (0.1, 0.5), (0.0, 0.1),
                                     (math.nan, 1.0)])
def test_the_second_look_steps_a_disc_in_pixels_whatever_the_spacing(spacing):
    """The disc the second look steps over is measured in pixels (a body in millimetres
    turned back into pixels by the smaller spacing stepped past the sacrum on 5:1 pixels); an
    unusable spacing (zero, NaN) is none, not a crash: the sacrum's edge is found at the same
    place (the band, 0.9 mm, 9 px at 0.1 mm)."""
    truth = _spine()
    cfg = MeasuresConfig(min_disc_ratio=0.1, band_mm=0.9)
    spine = refine_spine(find_vertebrae(_grown(truth)), _drawn(truth), cfg, spacing)
    looked = look_below(spine, _drawn(truth), cfg, spacing)
    want = image_measures(_grown(truth), refine=cfg, image=_drawn(truth))[1]
    assert np.allclose(looked.vertebrae["S1"].superior.midpoint,
                       want.vertebrae["S1"].superior.midpoint, atol=0.05)
    assert spine.vertebrae["S1"].superior != looked.vertebrae["S1"].superior     # it moved


def test_segments_are_ordered_cranial_first_and_merged_once():
    """Segment names sort by their upper level, then their lower (``L4/L5`` before ``L4/S1``),
    and propose's list takes each once, in that order, whatever it held before."""
    from converters.spine.levels import segment_order
    assert sorted(["L5/S1", "L4/S1", "L4/L5", "L1/L2"], key=segment_order) == \
        ["L1/L2", "L4/L5", "L4/S1", "L5/S1"]
    from converters.annotations.proposals import ProposedRegion, snap_endplates
    outlines = _spine(sacral=-70.0)
    regions = [ProposedRegion("sacrum" if lv == "S1" else "lumbar",
                              [int(round(x)) for x in p[:, 0]], [int(round(y)) for y in p[:, 1]],
                              level=lv) for lv, p in outlines]
    held = ["L5/S1", "L1/L2"]
    snap_endplates(regions, _drawn(outlines), MeasuresConfig(), segments=held)
    assert held == ["L1/L2", "L5/S1"]
