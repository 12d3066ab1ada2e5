"""Fused blobs cut into their bodies for the clinical measures (converters/spine/fused.py): a
model's lumbar outline across a disc it did not see is cut at its waist into one outline per
body, the levels assigned again, so the spine is measured instead of every level above the
blob withheld; outlines of single bodies, a lone outline and fragments stay as they are.
The outlines are traced from masks drawn here, as evaluate traces a model's (pixel edges)."""
from __future__ import annotations

import cv2
import numpy as np

from converters.annotations.coco import mask_outline
from converters.spine.endplates import find_vertebrae
from converters.spine.fused import fused_pieces, levelled, split_fused

SHAPE = (520, 300)
TOPS = (40, 112, 184, 256, 328)      # L1..L5: 60 px bodies, 12 px discs
DEPTH = 80


def _body(top: int) -> np.ndarray:
    return np.array([[100, top], [100 + DEPTH, top], [100 + DEPTH, top + 60], [100, top + 60]])


def _sacrum() -> np.ndarray:
    return np.array([[95, 400], [185, 400], [170, 500], [110, 480]])


def _outlines(fuse: tuple[int, ...] = (), neck: int = 40, extra=()) -> list:
    """(class, outline) of L1-L5 and the sacrum traced from masks; the bodies of ``fuse``
    (indices, neighbours) joined into one blob by a neck ``neck`` px wide across each disc."""
    items, group = [], np.zeros(SHAPE, np.uint8)
    for k, top in enumerate(TOPS):
        m = group if k in fuse else np.zeros(SHAPE, np.uint8)
        cv2.fillPoly(m, [_body(top)], 1)
        if k in fuse and k + 1 in fuse:
            x0 = 100 + (DEPTH - neck) // 2
            m[top + 60:top + 72, x0:x0 + neck] = 1
        if k not in fuse:
            items.append(("lumbar", mask_outline(m.astype(bool))))
    if fuse:
        items.append(("lumbar", mask_outline(group.astype(bool))))
    for cls, pts in extra:
        m = np.zeros(SHAPE, np.uint8)
        cv2.fillPoly(m, [np.asarray(pts, np.int32)], 1)
        items.append((cls, mask_outline(m.astype(bool))))
    s = np.zeros(SHAPE, np.uint8)
    cv2.fillPoly(s, [_sacrum()], 1)
    return items + [("sacrum", mask_outline(s.astype(bool)))]


def _y_range(pts: np.ndarray) -> tuple[float, float]:
    return float(pts[:, 1].min()), float(pts[:, 1].max())


def test_a_fused_pair_is_cut_in_its_disc_and_measured():
    items = _outlines(fuse=(2, 3))
    assert sum(c == "lumbar" for c, _ in items) == 4
    whole = find_vertebrae(levelled(items))
    assert "fused blob" in whole.unusable["L4"] and "L1" in whole.unusable   # the count shifted
    cut = split_fused(items)
    lumbar = sorted((p for c, p in cut if c == "lumbar"), key=lambda p: p[:, 1].mean())
    assert len(lumbar) == 5
    (_, l3_bottom), (l4_top, _) = _y_range(lumbar[2]), _y_range(lumbar[3])
    # the cut lies in the disc (rows 244-256), each piece trimmed by half the disc's height
    assert 244 - 1 <= l3_bottom < l4_top <= 256 + 1
    assert l4_top - l3_bottom > 4
    spine = find_vertebrae(levelled(cut))
    assert not spine.unusable, spine.unusable
    assert sorted(spine.vertebrae) == ["L1", "L2", "L3", "L4", "L5", "S1"]


def test_the_cut_follows_the_waist_not_the_expected_middle():
    """Bodies of unequal height (50 and 66 px) joined by a 16 px neck: the cut is in the
    middle of the neck (row 242), not where two equal bodies would meet (row 250)."""
    m = np.zeros(SHAPE, np.uint8)
    cv2.fillPoly(m, [np.array([[100, 184], [180, 184], [180, 234], [100, 234]])], 1)
    cv2.fillPoly(m, [np.array([[100, 250], [180, 250], [180, 316], [100, 316]])], 1)
    m[234:250, 120:160] = 1
    singles = [("lumbar", mask_outline(cv2.fillPoly(np.zeros(SHAPE, np.uint8),
                                                    [_body(t)], 1).astype(bool)))
               for t in TOPS[:2]]
    pieces = [p for c, p in split_fused(singles + [("lumbar", mask_outline(m.astype(bool)))])
              if c == "lumbar"][2:]
    assert len(pieces) == 2
    upper, lower = sorted(pieces, key=lambda p: p[:, 1].mean())
    # trimmed by half the disc (6 px) either side of row 242
    assert abs(_y_range(upper)[1] - 236) <= 1.5 and abs(_y_range(lower)[0] - 248) <= 1.5


def test_three_fused_bodies_give_three():
    items = _outlines(fuse=(1, 2, 3))
    first, last = _y_range(items[-2][1])              # the blob (after the single bodies)
    cut = split_fused(items)
    lumbar = sorted((p for c, p in cut if c == "lumbar"), key=lambda p: p[:, 1].mean())
    assert len(lumbar) == 5
    for piece, top in zip(lumbar, TOPS):          # each cut in its disc's middle, trimmed 6 px
        lo, hi = _y_range(piece)
        assert abs(lo - top) <= 1.5 and abs(hi - (top + 60)) <= 1.5, (top, lo, hi)
    assert _y_range(lumbar[1])[0] == first and _y_range(lumbar[3])[1] == last   # its ends
    assert not find_vertebrae(levelled(cut)).unusable


def test_single_bodies_and_a_lone_outline_stay_as_they_are():
    items = _outlines()
    assert split_fused(items) == items
    lone = [items[2], items[-1]]
    assert split_fused(lone) == lone
    # a body a little taller than the others (x 1.3) is one body still
    tall = [("lumbar", _body(40)), ("lumbar", _body(112)),
            ("lumbar", np.array([[100, 184], [180, 184], [180, 262], [100, 262]]))]
    assert split_fused(tall) == tall


def test_a_fragment_is_no_yardstick_and_is_kept():
    """A sliver of the vertebra above L1 (cut off by the image's edge) is neither cut nor
    the body height by which a blob is judged."""
    sliver = ("lumbar", np.array([[110, 2], [170, 2], [170, 18], [110, 18]]))
    items = [sliver] + _outlines(fuse=(2, 3))
    cut = split_fused(items)
    assert cut[0] is sliver
    assert sum(c == "lumbar" for c, _ in cut) == 6


def test_other_classes_and_degenerate_outlines_pass_through():
    odd = [("implant", np.array([[0, 0], [5, 0], [5, 5]])),
           ("lumbar", np.array([[10, 10], [20, 10], [30, 10]]))]        # no area
    items = _outlines(fuse=(2, 3)) + odd
    cut = split_fused(items)
    assert all(any(p is q for _, q in cut) for _, p in odd)
    levels = [lv for lv, _ in levelled(cut)]
    assert sorted(lv for lv in levels if lv) == ["L1", "L2", "L3", "L4", "L5", "S1"]


def _traced(*rects) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    for x0, y0, x1, y1 in rects:
        m[y0:y1, x0:x1] = 1
    return mask_outline(m.astype(bool))


def test_a_narrow_fragment_is_no_yardstick():
    """A sliver of a body (45 px wide, 35 tall: the shortest outline) beside two bodies and a
    fused pair: the pair is cut by the bodies' height, once, in its disc (by the sliver's, it
    would be cut into three)."""
    items = [("lumbar", _traced((118, 2, 163, 37)))] + _outlines(fuse=(2, 3))
    cut = fused_pieces(items)
    assert len(cut) == 1
    (pieces,) = cut.values()
    assert len(pieces) == 2
    assert _y_range(pieces[0])[1] < _y_range(pieces[1])[0] and \
        244 - 1 <= _y_range(pieces[0])[1] and _y_range(pieces[1])[0] <= 256 + 1


def test_a_blob_is_counted_by_one_body_and_a_wrong_count_cuts_nothing():
    # one single body and a blob of four: cut into four by that body's height
    blob = _traced((100, 112, 180, 172), (100, 184, 180, 244), (100, 256, 180, 316),
                   (100, 328, 180, 388), (120, 172, 160, 184), (120, 244, 160, 256),
                   (120, 316, 160, 328))
    (pieces,) = fused_pieces([("lumbar", _traced((100, 40, 180, 100))), ("lumbar", blob)]).values()
    assert len(pieces) == 4
    for piece, top in zip(pieces, TOPS[1:]):
        lo, hi = _y_range(piece)
        assert top - 7 <= lo <= top + 7 and top + 53 <= hi <= top + 67, (top, lo, hi)
    # a count that leaves a piece shorter than 0.4 bodies, or taller than 1.5, is no count
    from shapely.geometry import Polygon
    from converters.spine.fused import _pieces
    pair = Polygon(_outlines(fuse=(2, 3))[-2][1])             # 184..317, 133 px
    down, centre = np.array([0.0, 1.0]), np.array(pair.centroid.coords[0])
    lo = 184 - centre[1]
    assert len(_pieces(pair, centre, down, lo, 133, 2, 60, 12)) == 2
    assert _pieces(pair, centre, down, lo, 133, 6, 60, 0) is None        # 22 px slivers
    assert _pieces(pair, centre, down, lo, 133, 2, 40, 12) is None       # 60 px > 1.5 x 40
    assert fused_pieces(_outlines(fuse=(2, 3)))                  # the full pair is cut


def test_a_speck_takes_no_level():
    """A model's speck between L5 and the sacrum (40 px, a hundredth of a body) would take L5
    and shift every level above it: it gets none, and the five bodies keep theirs."""
    items = _outlines()
    speck = ("lumbar", _traced((130, 390, 138, 395)))
    levels = levelled(items[:5] + [speck] + items[5:])
    assert levels[5][0] is None
    assert [lv for lv, _ in levels[:5]] == ["L1", "L2", "L3", "L4", "L5"]
    assert [lv for lv, _ in levelled(items)] == ["L1", "L2", "L3", "L4", "L5", "S1"]
    # more specks than bodies (a column of them beside the spine): still none takes a level
    specks = [("lumbar", _traced((200, y, 206, y + 6))) for y in range(40, 400, 50)]
    levels = levelled(items[:5] + specks + items[5:])
    assert [lv for lv, _ in levels] == ["L1", "L2", "L3", "L4", "L5"] + [None] * 8 + ["S1"]


def test_islands_beside_the_spine_cut_no_body():
    """A model's false island beside a clean spine (a speck to a body's size, anywhere to its
    right): it bends the axis at its neighbours, where a body measured across the bent axis
    looks tall; no body is ever cut."""
    items = _outlines()
    for size in (5, 12, 30, 50, 70):
        for x in range(185, 320, 15):
            for y in range(0, 420, 15):
                island = ("lumbar", np.array([[x, y], [x + size, y], [x + size, y + size],
                                              [x, y + size]], float))
                assert fused_pieces(items[:5] + [island] + items[5:]) == {}, (size, x, y)


def test_a_vertebra_cut_by_the_edge_and_a_column_of_specks_are_no_yardstick():
    # the vertebra above L1 with 30 of its 60 px in the image: the fused pair is cut once
    edge = ("lumbar", _traced((100, 0, 180, 30)))
    cut = fused_pieces([edge] + _outlines(fuse=(2, 3)))
    assert [len(v) for v in cut.values()] == [2]
    # a slimmer spine (bodies 60 x 70) under a vertebra cut to 36 x 70 by the edge: body-shaped
    # still, and the shortest, but one outline against five: no body is cut
    slim = [("lumbar", _traced((100, 4, 170, 40)))] + \
        [("lumbar", _traced((100, t, 170, t + 60))) for t in TOPS] + _outlines()[5:]
    assert fused_pieces(slim) == {}
    # the whole spine one blob, six 8 px specks beside it: nothing to measure the blob by
    blob = _traced(*[(100, t, 180, t + 60) for t in TOPS],
                   *[(120, t + 60, 160, t + 72) for t in TOPS[:-1]])
    specks = [("lumbar", _traced((220, y, 228, y + 8))) for y in range(60, 400, 60)]
    assert fused_pieces([("lumbar", blob)] + specks) == {}


def test_bodies_joined_at_a_pixel_corner_are_one_blob_and_cut():
    """An 8-connected component whose two bodies touch only diagonally: its traced outline
    touches itself at a corner; the blob is still cut into the two."""
    m = np.zeros(SHAPE, np.uint8)
    m[184:244, 100:180] = 1
    m[256:316, 100:180] = 1
    for k in range(12):                    # a one-pixel diagonal chain across the disc
        m[244 + k, 140 + k] = 1
    items = _outlines()[:2] + [("lumbar", mask_outline(m.astype(bool)))] + _outlines()[4:]
    (pieces,) = fused_pieces(items).values()
    assert len(pieces) == 2
    assert [lv for lv, _ in levelled(split_fused(items))] == \
        ["L1", "L2", "L3", "L4", "L5", "S1"]


def test_degenerate_outlines_neither_crash_nor_get_cut():
    square = np.array([[100, 100], [180, 100], [180, 160], [100, 160]], float)
    assert fused_pieces([("lumbar", square), ("lumbar", square.copy())]) == {}   # one centroid
    odd = [("lumbar", np.array([[np.nan, 0], [5, 0], [5, 5]])),
           ("lumbar", np.array([[0, 0], [np.inf, 0], [5, 5]])),
           ("lumbar", np.zeros(6)), ("lumbar", [[0, 0], [4, 0], [4, 4]])]
    items = _outlines(fuse=(2, 3)) + odd
    cut = split_fused(items)
    assert all(any(p is q for _, q in cut) for _, p in odd)
    assert sum(c == "lumbar" for c, _ in cut) == 5 + len(odd)
    assert [lv for lv, _ in levelled(cut)][-len(odd):] == [None] * len(odd)


def test_evaluate_traces_the_kept_crops_where_the_whole_mask_lies():
    """evaluate's outlines of a semantic prediction (its components' crops, offset back into
    the image) are the whole mask's outlines, pixel edge for pixel edge, cut or not."""
    from train.evaluation.evaluate import predicted_outlines
    from train.evaluation.recognition import components

    mask, whole = np.zeros(SHAPE, np.uint8), {}
    for lv, (value, (y0, y1, x0, x1)) in zip(
            ["L1", "L2", "L3", "L4", "L5", "S1"],
            [(1, (top, top + 60, 100 + k, 180 - k)) for k, top in enumerate(TOPS)]
            + [(2, (400, 480, 110, 170))]):
        mask[y0:y1, x0:x1] = value
        alone = np.zeros(SHAPE, bool)
        alone[y0:y1, x0:x1] = True
        whole[lv] = mask_outline(alone)
    inst = components(mask, {"lumbar": 1, "sacrum": 2})
    for split in (False, True):
        got = dict(predicted_outlines(inst, split=split))
        assert sorted(got) == sorted(whole)
        for lv, outline in whole.items():
            assert np.array_equal(got[lv], outline), (split, lv)


def test_three_bodies_overlapping_in_projection_are_three():
    """A blob of three bodies whose discs overlap in projection (168 px: no disc inside it) is
    counted by its own height, not the spine's discs: three pieces, not two of 1.3 bodies."""
    blob = _traced((100, 112, 180, 172), (100, 166, 180, 226), (100, 220, 180, 280))
    items = [("lumbar", _traced((100, 40, 180, 100))), ("lumbar", blob),
             ("lumbar", _traced((100, 292, 180, 352)))] + _outlines()[5:]
    (pieces,) = fused_pieces(items).values()
    assert [round(_y_range(p)[1] - _y_range(p)[0]) for p in pieces] == [56, 56, 56]
    assert [lv for lv, _ in levelled(split_fused(items))] == \
        ["L1", "L2", "L3", "L4", "L5", "S1"]


def _rotated(cx: float, cy: float, deg: float, h: float = 56, w: float = 80) -> np.ndarray:
    """A body's corners: ``w`` x ``h`` around (cx, cy), turned by ``deg``."""
    t = np.radians(deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    box = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return box @ rot.T + [cx, cy]


def test_a_pair_is_measured_by_its_height_not_its_extent_along_the_axis():
    """Single bodies tilted 15 deg against the axis (a lordotic spine's bodies tilt each their
    own way) and an upright pair overlapping in projection (110 px, no disc): along the axis the
    singles reach 75 px, corners and all, and the pair 1.47 of that; by their heights (56 and
    110 px) the pair is two bodies, and is cut where they meet."""
    m = np.zeros(SHAPE, np.uint8)
    cv2.fillPoly(m, [np.array([[100, 184], [180, 184], [180, 294], [100, 294]])], 1)
    singles = [("lumbar", mask_outline(cv2.fillPoly(
        np.zeros(SHAPE, np.uint8), [np.round(_rotated(140, cy, 15)).astype(np.int32)],
        1).astype(bool))) for cy in (60, 130, 348, 418)]
    items = singles[:2] + [("lumbar", mask_outline(m.astype(bool)))] + singles[2:]
    (pieces,) = fused_pieces(items).values()
    upper, lower = sorted(pieces, key=lambda p: p[:, 1].mean())
    assert abs(_y_range(upper)[1] - 239) <= 2 and abs(_y_range(lower)[0] - 239) <= 2


def test_bodies_overlapping_in_projection_are_cut_where_they_meet_not_at_a_waist():
    """Two bodies with concave walls (3 px in at mid-height, as a vertebral body's) overlapping
    in projection: the blob is widest where they meet (the endplates flare) and narrowest at
    each body's middle; without a waist between the bodies the cut lies where they meet."""
    def waisted(top: int) -> np.ndarray:
        return np.array([[100, top], [180, top], [177, top + 28], [180, top + 56],
                         [100, top + 56], [103, top + 28]])
    m = np.zeros(SHAPE, np.uint8)
    cv2.fillPoly(m, [waisted(184), waisted(238)], 1)         # 2 px overlap: rows 238-240
    singles = [("lumbar", mask_outline(cv2.fillPoly(np.zeros(SHAPE, np.uint8), [waisted(t)],
                                                    1).astype(bool))) for t in (40, 112, 306)]
    items = singles[:2] + [("lumbar", mask_outline(m.astype(bool)))] + singles[2:]
    (pieces,) = fused_pieces(items).values()
    upper, lower = sorted(pieces, key=lambda p: p[:, 1].mean())
    assert abs(_y_range(upper)[1] - 239) <= 2 and abs(_y_range(lower)[0] - 239) <= 2
    assert [lv for lv, _ in levelled(split_fused(items + _outlines()[5:]))] == \
        ["L1", "L2", "L3", "L4", "L5", "S1"]


def test_a_disc_as_tall_as_the_search_is_still_a_waist():
    """Bodies of 66 and 50 px across a 20 px disc whose neck is half their width: the neck fills
    most of the search around the cut, but is narrow against the blob's own width, so the cut
    follows it (rows 246-266), not where equal bodies would meet."""
    singles = [("lumbar", _traced((100, t, 180, t + 60))) for t in (20, 100, 346)]
    blob = _traced((100, 180, 180, 246), (120, 246, 160, 266), (100, 266, 180, 316))
    (pieces,) = fused_pieces(singles[:2] + [("lumbar", blob)] + singles[2:]).values()
    upper, lower = sorted(pieces, key=lambda p: p[:, 1].mean())
    assert _y_range(upper)[1] >= 246 - 1 and _y_range(lower)[0] <= 266 + 1
    assert _y_range(upper)[1] < _y_range(lower)[0]
