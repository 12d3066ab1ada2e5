"""Readers, their agreement and their consensus (issue 24).

Constructed cases check the numbers by hand (a shifted reader, a rotated endplate, a level one
reader missed); the phantom's readers check that agreement recovers the behaviour they were drawn
with, and that the consensus is closer to the truth than every single reader.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from converters.annotations.adjudication import adjudication_project
from converters.annotations.agreement import agreement, pair_row
from converters.annotations.consensus import consensus, consensus_with_gaps, fuse
from converters.annotations.readers import (ADJUDICATED, CONSENSUS, DEFAULT_READER,
                                            ground_truth_reader, reader_files)
from converters.annotations.regions import Outline
from converters.annotations.via import read_via
from converters.core.errors import InvalidConfigError, UsageError
from converters.phantom.readers import (PROFILES, ReaderProfile, draw, misses_top, readers_of,
                                        redraw)
from converters.phantom.writing import PhantomConfig, generate
from converters.spine.levels import assign_levels
from converters.spine.measures import image_measures
from pipeline.cli import main

LEVELS = ["L1", "L2", "L3", "L4", "L5", "S1"]


def rect(cx: float, cy: float, w: float, h: float, angle_deg: float, level: str,
         cls: str = "lumbar") -> Outline:
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    xs = [cx + c * x - s * y for x, y in pts]
    ys = [cy + s * x + c * y for x, y in pts]
    return Outline(cls, xs, ys, 0, level)


def spine(dx: float = 0.0, rotate_l1: float = 0.0, without: str = "") -> list[Outline]:
    """Five lumbar bodies and a sacrum, lordotic (each level tilted a little more)."""
    out = []
    for k, lv in enumerate(LEVELS):
        angle = (-12 + 5 * k) + (rotate_l1 if lv == "L1" else 0.0)
        cls = "sacrum" if lv == "S1" else "lumbar"
        if lv != without:
            out.append(rect(200 + 6 * k + dx, 100 + 70 * k, 80, 50, angle, lv, cls))
    return out


def lordosis(outlines: list[Outline]) -> float | None:
    row, _ = image_measures([(o.level, np.c_[o.xs, o.ys]) for o in outlines])
    return row["lordosis_deg"]


# --------------------------------------------------------------------------------------------
# constructed cases


def test_a_reader_shifted_by_whole_pixels_has_the_iou_computed_by_hand_and_the_same_lordosis():
    res = agreement({"img.png": {"a": spine(), "b": spine(dx=3)}}, ["a", "b"], lambda _: None)
    rows = [r for r in res.pairs if r["level"] == "L3"]
    assert len(rows) == 1
    # an 80 x 50 body shifted 3 px along x, tilted: the overlap is the same whatever the tilt
    # when measured along the body's own axes; along x the shift has components 3cos, 3sin
    t = math.radians(-12 + 5 * 2)
    u, v = 3 * abs(math.cos(t)), 3 * abs(math.sin(t))
    inter = (80 - u) * (50 - v)
    assert rows[0]["iou"] == pytest.approx(inter / (2 * 80 * 50 - inter), abs=1e-6)
    assert rows[0]["dice"] == pytest.approx(2 * inter / (2 * 80 * 50), abs=1e-6)
    lord = [m for m in res.measures if m["measure"] == "lordosis_deg"][0]
    assert lord["diff"] == pytest.approx(0.0, abs=1e-6)
    pair = res.summary["pairs"]["a|b"]
    assert pair["lordosis_mae_deg"] == pytest.approx(0.0, abs=1e-6)
    assert pair["level_disagreements"] == 0


def test_the_boundary_distance_of_a_shifted_square_is_its_shift_where_sides_move_apart():
    a = Outline("lumbar", [0, 40, 40, 0], [0, 0, 40, 40], 0, "L3")
    b = Outline("lumbar", [2, 42, 42, 2], [0, 0, 40, 40], 0, "L3")
    row = pair_row("i", "L3", "a", "b", a, b, (0.5, 0.5))
    # the vertical sides are 2 px apart, the horizontal ones overlap but for 2 px at the ends:
    # distances are 2 on 2 x 40 of each outline's 160 px and 0..2 on the ends
    assert 0.9 < row["mean_boundary_px"] < 1.1
    assert row["hd95_px"] == pytest.approx(2.0, abs=1e-6)
    assert row["mean_boundary_mm"] == pytest.approx(row["mean_boundary_px"] * 0.5, rel=0.02)
    assert row["iou"] == pytest.approx(38 / 42)


def test_one_rotated_endplate_changes_the_lordosis_by_the_rotation():
    res = agreement({"img.png": {"a": spine(), "c": spine(rotate_l1=4.0)}}, ["a", "c"],
                    lambda _: None)
    lord = [m for m in res.measures if m["measure"] == "lordosis_deg"][0]
    assert abs(lord["diff"]) == pytest.approx(4.0, abs=0.01)


def test_a_level_drawn_by_one_reader_only_is_a_disagreement_and_no_number():
    res = agreement({"img.png": {"a": spine(), "d": spine(without="L1")}}, ["a", "d", "e"],
                    lambda _: None)
    l1 = [r for r in res.pairs if r["level"] == "L1"][0]
    assert (l1["present_a"], l1["present_b"]) == (1, 0) and "iou" not in l1
    assert res.summary["pairs"]["a|d"]["level_disagreements"] == 1
    lord = [m for m in res.measures if m["measure"] == "lordosis_deg"][0]
    assert lord["value_a"] is not None and lord["value_b"] is None and lord["diff"] is None
    # a reader sharing no image with another is reported, not a failure
    assert res.summary["readers_without_overlap"] == ["e"]
    assert res.worklist[0]["level_disagreements"] == 1


def test_the_worklist_puts_the_most_disputed_image_first_and_the_via_project_follows_it():
    readers = {"calm.png": {"a": spine(), "b": spine(dx=1)},
               "disputed.png": {"a": spine(), "b": spine(dx=6, without="L1")}}
    res = agreement(readers, ["a", "b"], lambda _: None)
    assert [w["image"] for w in res.worklist] == ["disputed.png", "calm.png"]
    project = adjudication_project(res.worklist, readers, {"calm.png": 10, "disputed.png": 11})
    meta = list(project["_via_img_metadata"].values())
    assert [m["filename"] for m in meta] == ["disputed.png", "calm.png"]
    assert meta[0]["file_attributes"] == {"settled": "no"}
    annot = sorted({r["region_attributes"]["annotator"] for r in meta[0]["regions"]})
    assert annot == ["a", "b"] and len(meta[0]["regions"]) == 11


def test_consensus_of_two_readers_runs_midway_and_of_three_follows_the_majority():
    a = Outline("lumbar", [10, 50, 50, 10], [10, 10, 40, 40], 0, "L3")
    b = Outline("lumbar", [12, 52, 52, 12], [10, 10, 40, 40], 0, "L3")
    c = Outline("lumbar", [11, 51, 51, 11], [11, 11, 41, 41], 0, "L3")
    two = consensus({"a": [a], "b": [b]})[0]
    assert (min(two.xs), max(two.xs), min(two.ys), max(two.ys)) == (11, 51, 10, 40)
    three = consensus({"a": [a], "b": [b], "c": [c]})[0]
    assert (min(three.xs), max(three.xs), min(three.ys), max(three.ys)) == (11, 51, 10, 40)
    assert three.region == -1 and three.level == "L3" and len(three.xs) <= 15
    # a structure one of three readers drew is not in the consensus
    lone = Outline("lumbar", [100, 140, 140, 100], [10, 10, 40, 40], 0, "L2")
    assert [o.level for o in consensus({"a": [a, lone], "b": [b], "c": [c]})] == ["L3"]
    # identical masks fuse to themselves
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 4:9] = 1
    assert (fuse([m, m, m]) == m).all() and (fuse([m, m]) == m).all()


def test_ground_truth_policy():
    assert ground_truth_reader(["r1"], CONSENSUS) == "r1"
    assert ground_truth_reader(["r1", "r2"], CONSENSUS) == CONSENSUS
    assert ground_truth_reader(["r1", "r2"], "r2") == "r2"
    assert ground_truth_reader(["r1", "r3"], "r2") == CONSENSUS
    assert ground_truth_reader(["r1", "r2", ADJUDICATED], "r2") == ADJUDICATED


def test_reader_folders_name_the_readers_and_bad_names_are_refused(tmp_path):
    empty = json.dumps({"_via_img_metadata": {}})
    (tmp_path / "ann" / "anna").mkdir(parents=True)
    (tmp_path / "ann" / "anna" / "a.json").write_text(empty)
    (tmp_path / "ann" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "ann" / ".ipynb_checkpoints" / "x.json").write_text(empty)
    (tmp_path / "ann" / "top.json").write_text(empty)
    files = reader_files([tmp_path / "ann"])
    assert [(f.reader, f.path.name) for f in files] == [("anna", "a.json"),
                                                        (DEFAULT_READER, "top.json")]
    assert [f.reader for f in reader_files([tmp_path / "ann" / "top.json"], "ben")] == ["ben"]
    with pytest.raises(UsageError, match="not a safe folder name"):
        reader_files([tmp_path / "ann" / "top.json"], "../x")
    (tmp_path / "ann" / "consensus").mkdir()
    with pytest.raises(UsageError, match="reserved"):
        reader_files([tmp_path / "ann"])


# --------------------------------------------------------------------------------------------
# the convert stage with several readers


def _png(path, h=400, w=300):
    import cv2
    cv2.imwrite(str(path), np.full((h, w), 90, np.uint8))


def _via(path, image: str, outlines: list[Outline], size: int = -1, **file_attributes):
    regions = [{"shape_attributes": {"name": "polygon", "all_points_x": [round(x) for x in o.xs],
                                     "all_points_y": [round(y) for y in o.ys]},
                "region_attributes": {"class": o.cls}} for o in outlines]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"_via_img_metadata": {f"{image}{size}": {
        "filename": image, "size": size, "regions": regions,
        "file_attributes": file_attributes}}}))


def small_spine(dx: float = 0.0, without: str = "") -> list[Outline]:
    return [rect(150 + dx, 40 + 60 * k, 60, 40, -8 + 3 * k, lv,
                 "sacrum" if lv == "S1" else "lumbar")
            for k, lv in enumerate(LEVELS) if lv != without]


def test_convert_takes_the_consensus_the_reference_reader_or_the_settled_adjudication(tmp_path,
                                                                                        capsys):
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    ann = tmp_path / "ann"
    for reader, dx in (("r1", 0), ("r2", 2), ("r3", 4)):
        _via(ann / reader / "v.json", "x.png", small_spine(dx))
    out = tmp_path / "processed"
    assert main(["convert", "-i", str(ann), "--images", str(png), "-o", str(out), "--quiet",
                 "--params", str(tmp_path / "none.yaml")]) == 0
    coco = json.loads((out / "coco.json").read_text())
    assert {a["annotator"] for a in coco["annotations"]} == {CONSENSUS}
    l3 = [a for a in coco["annotations"] if a["level"] == "L3"][0]
    xs = l3["segmentation"][0][0::2]
    # the middle reader's outline (dx 2) is the majority's
    assert np.mean(xs) == pytest.approx(np.mean(small_spine(2)[2].xs), abs=0.6)
    row = next(csv.DictReader((out / "images.csv").open()))
    assert (row["readers"], row["ground_truth"]) == ("r1 r2 r3", CONSENSUS)
    # convert.reference names a reader
    (tmp_path / "p.yaml").write_text("convert:\n  reference: r3\n")
    assert main(["convert", "-i", str(ann), "--images", str(png), "-o", str(out), "--quiet",
                 "--params", str(tmp_path / "p.yaml")]) == 0
    coco = json.loads((out / "coco.json").read_text())
    assert {a["annotator"] for a in coco["annotations"]} == {"r3"}
    # an unknown reader is a one-line error
    (tmp_path / "p.yaml").write_text("convert:\n  reference: r9\n")
    capsys.readouterr()
    assert main(["convert", "-i", str(ann), "--images", str(png), "-o", str(out), "--quiet",
                 "--params", str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err
    assert "convert.reference" in err and "r9" in err and len(err.strip().splitlines()) == 1
    # an adjudication counts once settled
    _via(ann / ADJUDICATED / "adj.json", "x.png", small_spine(10), settled="no")
    assert main(["convert", "-i", str(ann), "--images", str(png), "-o", str(out), "--quiet",
                 "--params", str(tmp_path / "none.yaml")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"].get("not_settled") == 1
    assert {a["annotator"] for a in json.loads((out / "coco.json").read_text())["annotations"]} \
        == {CONSENSUS}
    _via(ann / ADJUDICATED / "adj.json", "x.png", small_spine(10), settled="yes")
    assert main(["convert", "-i", str(ann), "--images", str(png), "-o", str(out), "--quiet",
                 "--params", str(tmp_path / "none.yaml")]) == 0
    assert {a["annotator"] for a in json.loads((out / "coco.json").read_text())["annotations"]} \
        == {ADJUDICATED}


def test_readers_who_disagree_on_an_image_size_are_an_error_naming_the_file(tmp_path, capsys):
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    _via(tmp_path / "ann" / "r1" / "v.json", "x.png", small_spine(), size=100)
    _via(tmp_path / "ann" / "r2" / "w.json", "x.png", small_spine(), size=200)
    capsys.readouterr()
    code = main(["convert", "-i", str(tmp_path / "ann"), "--images", str(png), "-o",
                 str(tmp_path / "out"), "--quiet", "--params", str(tmp_path / "none.yaml")])
    err = capsys.readouterr().err
    assert code == 1 and "w.json" in err and "x.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_one_reader_annotating_an_image_twice_is_still_a_duplicate(tmp_path):
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    _via(tmp_path / "ann" / "r1" / "v.json", "x.png", small_spine())
    _via(tmp_path / "ann" / "r1" / "w.json", "x.png", small_spine(2))
    _via(tmp_path / "ann" / "r2" / "v.json", "x.png", small_spine(4))
    out = tmp_path / "out"
    assert main(["convert", "-i", str(tmp_path / "ann"), "--images", str(png), "-o", str(out),
                 "--quiet", "--params", str(tmp_path / "none.yaml")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["duplicate_image"] == 1
    assert next(csv.DictReader((out / "images.csv").open()))["readers"] == "r1 r2"


def test_the_agreement_command_writes_every_table(tmp_path):
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    _png(png / "y.png")
    _via(tmp_path / "ann" / "r1" / "v.json", "x.png", small_spine())
    _via(tmp_path / "ann" / "r2" / "v.json", "x.png", small_spine(3, without="L1"))
    _via(tmp_path / "ann" / "r3" / "v.json", "y.png", small_spine())
    out = tmp_path / "agreement"
    assert main(["agreement", "-i", str(tmp_path / "ann"), "--images", str(png), "-o", str(out),
                 "--quiet", "--params", str(tmp_path / "none.yaml")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["readers"] == ["r1", "r2", "r3"]
    assert summary["readers_without_overlap"] == ["r3"]
    assert summary["images_read_by_two_or_more"] == 1
    assert summary["pairs"]["r1|r2"]["level_disagreements"] == 1
    pairs = list(csv.DictReader((out / "pairs.csv").open()))
    assert len(pairs) == 6 and pairs[0]["level"] == "L1" and pairs[0]["present_b"] == "0"
    assert list(csv.DictReader((out / "worklist.csv").open()))[0]["image"] == "x.png"
    fmt, images = read_via(out / "adjudication_via.json")
    assert fmt == "via2-project" and images[0].file_attributes["settled"] == "no"
    assert {r.attributes["annotator"] for r in images[0].regions} == {"r1", "r2"}
    assert "against_truth" not in summary
    # with a known truth: every reader and the consensus against it
    _via(tmp_path / "truth.json", "x.png", small_spine(1))
    assert main(["agreement", "-i", str(tmp_path / "ann"), "--images", str(png), "-o", str(out),
                 "--truth", str(tmp_path / "truth.json"), "--quiet",
                 "--params", str(tmp_path / "none.yaml")]) == 0
    against = json.loads((out / "summary.json").read_text())["against_truth"]
    assert list(against) == ["r1", "r2", CONSENSUS] and against["r1"]["images"] == 1
    assert against["r2"]["mean_iou"] < against["r1"]["mean_iou"]   # r2 missed L1: an IoU of 0


# --------------------------------------------------------------------------------------------
# the phantom's readers: what was drawn is what agreement finds


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """40 phantom images (those with a sixth lumbar vertebra left out), each read by the three
    readers (as phantom-annotations draws)."""
    root = tmp_path_factory.mktemp("readers")
    results = generate(PhantomConfig(n=40, seed=11, height=640, width=256), root, workers=2)
    truth = json.loads((root / "truth.json").read_text())
    spacing = 0.143 * 2870 / 640
    readers_of_image, truth_outlines = {}, {}
    for meta in read_via(root / "annotations" / "via_project.json")[1]:
        name = meta.filename
        if truth[name.removesuffix(".png")]["transitional"] == "six_lumbar":
            continue   # six lumbar vertebrae: no levels, no true measures to compare with
        true = [Outline(r.attributes["class"], r.xs, r.ys, r.index) for r in meta.regions
                if r.attributes["class"] in ("lumbar", "sacrum")]
        assign_levels(true)
        truth_outlines[name] = true
        per = {}
        polygons = [r for r in meta.regions if r.attributes["class"] in ("lumbar", "sacrum")]
        for p in PROFILES:   # as phantom-annotations draws them
            outs = [Outline(r.attributes["class"], r.xs, r.ys, r.index)
                    for r in redraw(name, polygons, p, spacing)]
            assign_levels(outs)
            per[p.name] = outs
        readers_of_image[name] = per
    assert len(results) == 40
    return readers_of_image, truth_outlines, truth, spacing


def test_the_readers_lordosis_disagreement_is_what_their_drawn_jitter_implies(drawn):
    readers_of_image, _, truth, spacing = drawn
    res = agreement(readers_of_image, [p.name for p in PROFILES], lambda _: (spacing, spacing))
    jitter = {p.name: p.jitter_mm / spacing for p in PROFILES}
    for key, pair in res.summary["pairs"].items():
        a, b = key.split("|")
        expected = []
        for m in res.measures:
            if (m["measure"], m["reader_a"], m["reader_b"]) != ("lordosis_deg", a, b) \
                    or m["diff"] is None:
                continue
            plates = truth[m["image"].removesuffix(".png")]["endplates"]
            inv = sum(1 / np.linalg.norm(np.subtract(*plates[lv]["superior"])) ** 2
                      for lv in ("L1", "S1"))
            # each corner off by N(0, s^2) across the endplate: an endplate's angle error has
            # variance 2 s^2 / L^2; the lordosis adds L1's and S1's, the difference both readers'
            sd = math.sqrt(2 * (jitter[a] ** 2 + jitter[b] ** 2) * inv)
            expected.append(math.degrees(sd) * math.sqrt(2 / math.pi))
        assert len(expected) >= 30
        assert pair["lordosis_mae_deg"] == pytest.approx(np.mean(expected), rel=0.25), key


def test_the_drawn_systematic_behaviour_shows_against_the_consensus(drawn):
    readers_of_image, _, _, spacing = drawn
    res = agreement(readers_of_image, [p.name for p in PROFILES], lambda _: (spacing, spacing))
    against = res.summary["against_consensus"]
    # reader2 draws larger and misses L1 at times: the lowest IoU against the consensus
    assert against["reader2"]["mean_iou"] < min(against["reader1"]["mean_iou"],
                                                against["reader3"]["mean_iou"])
    missed = sum(misses_top(name, PROFILES[1]) for name in readers_of_image)
    assert res.summary["pairs"]["reader1|reader2"]["level_disagreements"] == missed > 0


def test_a_reader_placing_the_superior_endplates_higher_lowers_every_disc_by_that_much(drawn):
    readers_of_image, truth_outlines, _, spacing = drawn
    high = ReaderProfile("high", 0.0, 0.0, 0.8, 1, 0.0)
    diffs, bodies = [], []
    for name in list(readers_of_image)[:10]:
        true = truth_outlines[name]
        moved = [Outline(o.cls, *draw(o.xs, o.ys, high, spacing, np.random.default_rng(0)),
                         o.region, o.level) for o in true]
        a, _ = image_measures([(o.level, np.c_[o.xs, o.ys]) for o in true], (spacing, spacing))
        b, _ = image_measures([(o.level, np.c_[o.xs, o.ys]) for o in moved], (spacing, spacing))
        diffs += [b[c] - a[c] for c in a if c.startswith("disc_") and c.endswith("middle_mm")
                  and a[c] is not None and b[c] is not None]
        bodies += [b[c] - a[c] for c in a if c.startswith("body_") and c.endswith("_mm")
                   and a[c] is not None and b[c] is not None]
    assert np.mean(diffs) == pytest.approx(-0.8, abs=0.1)
    assert np.mean(bodies) == pytest.approx(0.8, abs=0.1)


def test_the_consensus_is_closer_to_the_truth_than_every_reader(drawn):
    readers_of_image, truth_outlines, truth, spacing = drawn
    ious = {p.name: [] for p in PROFILES} | {CONSENSUS: []}
    errs = {p.name: [] for p in PROFILES} | {CONSENSUS: []}
    for name, readers in readers_of_image.items():
        true = {o.level: o for o in truth_outlines[name]}
        true_lord = truth[name.removesuffix(".png")]["measures"]["lordosis_deg"]
        for who, outs in [*readers.items(), (CONSENSUS, consensus(readers))]:
            mine = {o.level: o for o in outs}
            for lv, t in true.items():
                ious[who].append(pair_row(name, lv, "t", who, t, mine.get(lv), None)
                                 .get("iou", 0.0))
            lord = lordosis(outs)
            if lord is not None:
                errs[who].append(abs(lord - true_lord))
    for p in PROFILES:
        assert np.mean(ious[CONSENSUS]) > np.mean(ious[p.name]), p.name
        assert np.mean(errs[CONSENSUS]) < np.mean(errs[p.name]), p.name
    # agreement says the same when given the truth (what the demo's report shows)
    res = agreement(readers_of_image, [p.name for p in PROFILES], lambda _: (spacing, spacing),
                    truth_of=truth_outlines)
    against = res.summary["against_truth"]
    assert list(against) == [p.name for p in PROFILES] + [CONSENSUS]
    assert against[CONSENSUS]["images"] == len(readers_of_image)
    for p in PROFILES:
        assert against[CONSENSUS]["mean_iou"] > against[p.name]["mean_iou"]
    # lordosis against the polygons the readers perturb (not the exact geometry above): the
    # careful reader1 keeps the truth's own clicks, the consensus re-traces them from a mask;
    # on the radiograph-like phantom's rounded corners the two are level (0.95 and 0.98 deg),
    # the consensus better than the other two readers (1.22, 1.35)
    lord = {who: a["lordosis_mae_deg"] for who, a in against.items()}
    assert lord[CONSENSUS] < min(lord["reader2"], lord["reader3"])
    assert lord[CONSENSUS] <= lord["reader1"] + 0.05
    assert against[CONSENSUS]["mean_iou"] == pytest.approx(np.mean(ious[CONSENSUS]), abs=1e-4)


def test_who_reads_what_is_stable_and_shares_the_double_reads():
    names = [f"img{k}.png" for k in range(400)]
    sets = [readers_of(n, 3, 0.2) for n in names]
    share = sum(len(s) == 3 for s in sets) / len(sets)
    assert 0.15 < share < 0.25
    assert all(len(s) in (1, 3) for s in sets)
    assert sets == [readers_of(n, 3, 0.2) for n in names]
    assert {s[0] for s in sets if len(s) == 1} == {"reader1", "reader2", "reader3"}
    assert all(s == ["reader1"] for s in (readers_of(n, 1, 0.5) for n in names))


def test_an_unknown_reference_is_refused_before_anything_is_read(tmp_path):
    from converters.annotations.readers import check_reference
    with pytest.raises(InvalidConfigError, match="r9"):
        check_reference("r9", ["r1"], file=tmp_path)


# --------------------------------------------------------------------------------------------
# the report: humans vs models


def test_humans_vs_models_puts_each_model_beside_the_readers_on_the_same_test_images(tmp_path):
    from pycocotools import mask as mask_utils
    from train.report.humans import (IOU, agreement_tables, humans_vs_models, load_agreement,
                                     model_ious, readers_lordosis)
    from converters.annotations.agreement import MEASURE_FIELDS, PAIR_FIELDS, csv_text
    # readers: a.png read twice (IoU 0.9 and a missed level: 0), b.png too but not a test image
    folder = tmp_path / "agreement"
    folder.mkdir()
    pairs = [{"image": "a.png", "level": "L1", "reader_a": "r1", "reader_b": "r2",
              "present_a": 1, "present_b": 1, "iou": 0.9},
             {"image": "a.png", "level": "L2", "reader_a": "r1", "reader_b": "r2",
              "present_a": 1, "present_b": 0},
             {"image": "b.png", "level": "L1", "reader_a": "r1", "reader_b": "r2",
              "present_a": 1, "present_b": 1, "iou": 0.1}]
    measures = [{"image": "a.png", "measure": "lordosis_deg", "reader_a": "r1", "reader_b": "r2",
                 "value_a": 40.0, "value_b": 43.0, "diff": 3.0},
                {"image": "b.png", "measure": "lordosis_deg", "reader_a": "r1",
                 "reader_b": "r2", "value_a": 40.0, "value_b": 60.0, "diff": 20.0}]
    (folder / "pairs.csv").write_text(csv_text(pairs, PAIR_FIELDS))
    (folder / "measures_pairs.csv").write_text(csv_text(measures, MEASURE_FIELDS))
    (folder / "summary.json").write_text(json.dumps({
        "images_read_by_two_or_more": 2,
        "pairs": {"r1|r2": {"images": 2, "mean_iou": 0.5, "lordosis_loa_deg": [-1.0, 2.0]}},
        "icc": {"lordosis_deg": {"value": 0.9, "ci95": [0.8, 0.95], "readers": ["r1", "r2"],
                                 "images": 2}},
        "against_consensus": {"r1": {"mean_iou": 0.95, "lordosis_mae_deg": 1.0}},
        "against_truth": {"r1": {"images": 2, "mean_iou": 0.9, "lordosis_mae_deg": 2.0},
                          "consensus": {"images": 2, "mean_iou": 0.95,
                                        "lordosis_mae_deg": 1.0}}}))
    readers = load_agreement(folder)
    # the test set: a.png (L1 a 10 x 10 square, L2 another) and c.png (read once)
    square = [[10, 10, 20, 10, 20, 20, 10, 20]]
    other = [[10, 30, 20, 30, 20, 40, 10, 40]]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 30},
                       {"id": 2, "file_name": "c.png", "height": 50, "width": 30}],
            "annotations": [{"image_id": 1, "level": "L1", "segmentation": square},
                            {"image_id": 1, "level": "L2", "segmentation": other}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    run = tmp_path / "eval" / "m" / "fold0"
    run.mkdir(parents=True)
    half = mask_utils.encode(np.asfortranarray(
        np.pad(np.ones((10, 5), np.uint8), ((10, 30), (10, 15)))))
    half["counts"] = half["counts"].decode()
    (run / "instances.json").write_text(json.dumps([
        {"file_name": "a.png", "level": "L1", "segmentation": half, "score": 0.9}]))
    ious = model_ious(tmp_path / "eval", [("m", 0)], tmp_path / "coco.json", {"a.png"})
    assert ious == {"m": [pytest.approx(0.5), 0.0]}  # half the square; L2 not found
    clinical = {"m": ([{"file_name": "a.png", "lordosis_deg": "41"},
                       {"file_name": "c.png", "lordosis_deg": "80"}],
                      [{"file_name": "a.png", "lordosis_deg": "40"},
                       {"file_name": "c.png", "lordosis_deg": "40"}])}
    table = humans_vs_models(readers, clinical, ious, {"a.png", "c.png"})
    readers_col = table.columns[0]
    assert "1 test images" in readers_col
    assert table.loc[IOU, readers_col] == "0.450"            # (0.9 + 0) / 2, b.png left out
    assert table.loc[IOU, "m"] == "0.250 (no)"
    assert table.loc["Lordosis L1-S1 MAE (deg)", readers_col] == "3.00 (n=1)"
    assert table.loc["Lordosis L1-S1 MAE (deg)", "m"] == "1.00 (yes; n=1)"   # c.png left out
    assert table.loc["Disc height MAE (mm)", "m"] == "n/a"
    # no test image read twice: no table
    assert humans_vs_models(readers, clinical, ious, {"c.png"}) is None
    tables = agreement_tables(readers)
    assert tables["readers_pairs"].loc["r1 vs r2", "Lordosis 95 % LoA (deg)"] == "-1.0 to 2.0"
    assert tables["readers_icc"].loc["lordosis_deg", "ICC(2,1)"] == "0.900"
    assert tables["readers_vs_truth"].loc["consensus", "Mean IoU"] == "0.950"
    ba = readers_lordosis(readers)
    assert [r["lordosis_deg"] for r in ba["r1 vs r2"][0]] == ["43.0", "60.0"]
    # absent or empty agreement: nothing to show
    assert load_agreement(tmp_path / "nowhere") is None
    (folder / "summary.json").write_text(json.dumps({"images_read_by_two_or_more": 0}))
    assert load_agreement(folder) is None


def test_staple_over_vote_patterns_is_simpleitks_staple():
    import SimpleITK as sitk
    from converters.annotations.consensus import staple
    rng = np.random.default_rng(7)
    for readers in (3, 4, 5):
        masks = []
        for _ in range(readers):
            m = np.zeros((120, 160), np.uint8)
            dy, dx = rng.integers(-5, 6, 2)
            grow = int(rng.integers(-3, 4))
            m[30 + dy - grow:90 + dy + grow, 40 + dx - grow:120 + dx + grow] = 1
            m[rng.random(m.shape) < 0.02] ^= 1
            masks.append(m)
        ref = sitk.GetArrayFromImage(sitk.STAPLE([sitk.GetImageFromArray(m) for m in masks],
                                                 1.0))
        ours = staple(masks)
        assert np.abs(ref - ours).max() < 1e-5
        assert ((ref >= 0.5) == (ours >= 0.5)).all()


def test_agreement_on_a_batch_whose_every_region_is_dropped_is_an_error(tmp_path, capsys):
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    for reader in ("r1", "r2"):
        _via(tmp_path / "ann" / reader / "v.json", "x.png",
             [Outline("tumour", o.xs, o.ys, 0) for o in small_spine()])
    capsys.readouterr()
    code = main(["agreement", "-i", str(tmp_path / "ann"), "--images", str(png), "-o",
                 str(tmp_path / "out"), "--quiet", "--params", str(tmp_path / "none.yaml")])
    err = capsys.readouterr().err
    assert code == 1 and "not one instance survived" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_readers_changed_file_re_renders_only_the_images_it_touches(tmp_path):
    from converters.annotations.convert import ConvertConfig, convert
    png = tmp_path / "png"
    png.mkdir()
    for name in ("x.png", "y.png", "z.png"):
        _png(png / name)
    ann = tmp_path / "ann"
    _via(ann / "r1" / "a.json", "x.png", small_spine())
    _via(ann / "r1" / "b.json", "y.png", small_spine())
    _via(ann / "r2" / "a.json", "x.png", small_spine(2))
    _via(ann / "r2" / "c.json", "z.png", small_spine())
    out = tmp_path / "out"
    cfg = ConvertConfig(qa=False)
    assert convert(reader_files([ann]), png, out, cfg).rendered == 3
    assert convert(reader_files([ann]), png, out, cfg).rendered == 0
    _via(ann / "r2" / "a.json", "x.png", small_spine(4))      # the second reader of x redraws
    report = convert(reader_files([ann]), png, out, cfg)
    assert report.rendered == 1 and report.removed == 0
    # the second reader withdraws x: x keeps its masks (its first reader's now), nothing else moves
    _via(ann / "r2" / "a.json", "other.png", small_spine())
    report = convert(reader_files([ann]), png, out, cfg)
    assert report.rendered == 1 and (out / "masks" / "x.png").is_file()
    assert {r["file_name"]: r["ground_truth"] for r in csv.DictReader(
        (out / "images.csv").open())}["x.png"] == "r1"


# --------------------------------------------------------------------------------------------
# after a hostile review


def _three_readers(tmp_path):
    png = tmp_path / "png"
    png.mkdir(exist_ok=True)
    _png(png / "x.png")
    for reader, dx in (("r1", 0), ("r2", 2), ("r3", 4)):
        _via(tmp_path / "ann" / reader / "v.json", "x.png", small_spine(dx))
    return png, tmp_path / "ann"


def _run(*args) -> int:
    return main([*map(str, args), "--quiet", "--params", "/nonexistent/none.yaml"])


def test_a_settled_adjudication_that_still_holds_every_readers_polygons_is_refused(tmp_path):
    png, ann = _three_readers(tmp_path)
    assert _run("agreement", "-i", ann, "--images", png, "-o", tmp_path / "agr") == 0
    project = json.loads((tmp_path / "agr" / "adjudication_via.json").read_text())
    for meta in project["_via_img_metadata"].values():
        meta["file_attributes"]["settled"] = "yes"     # settled without deleting anything
    (ann / ADJUDICATED).mkdir()
    (ann / ADJUDICATED / "adj.json").write_text(json.dumps(project))
    out = tmp_path / "out"
    assert _run("convert", "-i", ann, "--images", png, "-o", out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["not_adjudicated"] == 1
    assert [p for p in report["problems"] if p["kind"] == "not_adjudicated"][0]["severity"] \
        == "error"
    coco = json.loads((out / "coco.json").read_text())
    assert {a["annotator"] for a in coco["annotations"]} == {CONSENSUS}
    assert len(coco["annotations"]) == 6
    # one reader's polygons kept per vertebra, the annotator attribute left: settled
    meta = next(iter(project["_via_img_metadata"].values()))
    meta["regions"] = [r for r in meta["regions"] if r["region_attributes"]["annotator"] == "r2"]
    (ann / ADJUDICATED / "adj.json").write_text(json.dumps(project))
    assert _run("convert", "-i", ann, "--images", png, "-o", out) == 0
    coco = json.loads((out / "coco.json").read_text())
    assert {a["annotator"] for a in coco["annotations"]} == {ADJUDICATED}


def test_a_vertebra_the_readers_cannot_agree_on_is_a_problem_not_a_silence(tmp_path):
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    far = small_spine()
    far[0] = Outline("lumbar", [x + 100 for x in far[0].xs], far[0].ys, 0, "L1")
    _via(tmp_path / "ann" / "r1" / "v.json", "x.png", small_spine())
    _via(tmp_path / "ann" / "r2" / "v.json", "x.png", far)
    out = tmp_path / "out"
    assert _run("convert", "-i", tmp_path / "ann", "--images", png, "-o", out) == 0
    report = json.loads((out / "report.json").read_text())
    gaps = [p for p in report["problems"] if p["kind"] == "no_consensus"]
    assert len(gaps) == 1 and gaps[0]["image"] == "x.png" and "L1" in gaps[0]["message"]


def test_readers_in_perfect_agreement_write_valid_json(tmp_path):
    png = tmp_path / "png"
    png.mkdir()
    for k in range(4):
        _png(png / f"x{k}.png")
        for reader in ("r1", "r2"):
            _via(tmp_path / "ann" / reader / f"v{k}.json", f"x{k}.png", small_spine(k))
    assert _run("agreement", "-i", tmp_path / "ann", "--images", png, "-o",
                tmp_path / "agr") == 0
    text = (tmp_path / "agr" / "summary.json").read_text()

    def refuse(token):
        raise AssertionError(f"{token} in summary.json")
    summary = json.loads(text, parse_constant=refuse)
    assert summary["pairs"]["r1|r2"]["lordosis_mae_deg"] == 0


def test_the_limits_of_agreement_need_two_differences():
    res = agreement({"img.png": {"a": spine(), "c": spine(rotate_l1=4.0)}}, ["a", "c"],
                    lambda _: None)
    assert res.summary["pairs"]["a|c"]["lordosis_loa_deg"] is None


@pytest.mark.parametrize("damage", ["pairs", "measures", "summary", "deep", "readers"])
def test_the_report_reads_a_damaged_agreement_folder_as_one_line(tmp_path, damage):
    from converters.core.errors import InvalidTableError
    from train.report.humans import agreement_tables, load_agreement
    png, ann = _three_readers(tmp_path)
    agr = tmp_path / "agr"
    assert _run("agreement", "-i", ann, "--images", png, "-o", agr) == 0
    if damage == "pairs":
        (agr / "pairs.csv").write_text("level,reader_a\nL1,r1\n")
    elif damage == "measures":
        (agr / "measures_pairs.csv").write_text("image,measure\nx.png,lordosis_deg\n")
    elif damage == "summary":
        (agr / "summary.json").write_text("[1, 2]")
    elif damage == "deep":
        (agr / "summary.json").write_text("[" * 100_000)
    else:
        summary = json.loads((agr / "summary.json").read_text())
        summary["icc"]["lordosis_deg"]["readers"] = 5
        summary["pairs"]["r1|r2"]["images"] = {"a": 1}
        (agr / "summary.json").write_text(json.dumps(summary))
        tables = agreement_tables(load_agreement(agr))
        assert tables["readers_icc"].loc["lordosis_deg", "Readers"] == "n/a"
        assert tables["readers_pairs"].loc["r1 vs r2", "Images"] == "n/a"
        return
    with pytest.raises(InvalidTableError) as err:
        load_agreement(agr)
    assert err.value.file and Path(err.value.file).parent == agr


def test_a_linked_reader_folder_is_read_and_case_variants_of_reserved_names_refused(tmp_path):
    png, ann = _three_readers(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (ann / "r3").rename(elsewhere)
    (ann / "r3").symlink_to(elsewhere, target_is_directory=True)
    assert [f.reader for f in reader_files([ann])] == ["r1", "r2", "r3"]
    for name in ("Consensus", "ADJUDICATED"):
        (ann / name).mkdir()
        with pytest.raises(UsageError, match=name):
            reader_files([ann])
        (ann / name).rmdir()


def test_agreement_takes_the_reference_convert_takes_and_checks_its_truth(tmp_path, capsys):
    png, ann = _three_readers(tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text("convert:\n  reference: adjudicated\n")
    (ann / ADJUDICATED).mkdir()
    _via(ann / ADJUDICATED / "a.json", "x.png", small_spine(2), settled="yes")
    assert main(["agreement", "-i", str(ann), "--images", str(png), "-o", str(tmp_path / "a"),
                 "--params", str(params), "--quiet"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["readers"] == ["r1", "r2", "r3"]           # the expert is not a reader here
    # a truth with problems is refused, naming it; an empty one adds nothing
    truth = tmp_path / "truth.json"
    _via(truth, "gone.png", small_spine())
    capsys.readouterr()
    assert main(["agreement", "-i", str(ann), "--images", str(png), "-o", str(tmp_path / "b"),
                 "--truth", str(truth), "--quiet", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "truth.json" in err and "missing_image" in err and len(err.strip().splitlines()) == 1
    truth.write_text(json.dumps({"_via_img_metadata": {}}))
    assert main(["agreement", "-i", str(ann), "--images", str(png), "-o", str(tmp_path / "b"),
                 "--truth", str(truth), "--quiet", "--params", str(params)]) == 0
    assert "against_truth" not in json.loads((tmp_path / "b" / "summary.json").read_text())


def test_staple_over_vote_patterns_is_the_per_pixel_em_where_optima_are_many():
    """Noise-free nested boxes: SimpleITK may stop at another optimum; the pattern histogram
    must still be exactly the textbook per-pixel EM (same start, prior and stopping rule)."""
    from converters.annotations.consensus import staple

    def per_pixel(masks, tol=1e-7):
        d = np.stack([m.ravel().astype(float) for m in masks])
        prior = d.mean()
        p = np.full(len(masks), 0.99999)
        q = np.full(len(masks), 0.99999)
        for _ in range(1000):
            a = prior * np.prod(np.where(d > 0, p[:, None], 1 - p[:, None]), axis=0)
            b = (1 - prior) * np.prod(np.where(d > 0, 1 - q[:, None], q[:, None]), axis=0)
            w = a / (a + b)
            p_new, q_new = (d * w).sum(1) / w.sum(), ((1 - d) * (1 - w)).sum(1) / (1 - w).sum()
            change = max(abs(p_new - p).max(), abs(q_new - q).max())
            p, q = p_new, q_new
            if change < tol:
                break
        return w.reshape(masks[0].shape)

    rng = np.random.default_rng(1)
    for _ in range(40):
        masks = []
        for _ in range(int(rng.integers(3, 6))):
            m = np.zeros((60, 80), np.uint8)
            dy, dx = rng.integers(-8, 9, 2)
            g = int(rng.integers(-6, 12))
            m[max(0, 15 + dy - g):45 + dy + g, max(0, 20 + dx - g):60 + dx + g] = 1
            masks.append(m)
        assert np.abs(staple(masks) - per_pixel(masks)).max() < 1e-9


def test_images_csv_carries_each_images_content_fingerprint(tmp_path):
    import hashlib
    png = tmp_path / "png"
    png.mkdir()
    _png(png / "x.png")
    _via(tmp_path / "ann" / "v.json", "x.png", small_spine())
    out = tmp_path / "out"
    assert _run("convert", "-i", tmp_path / "ann", "--images", png, "-o", out) == 0
    row = next(csv.DictReader((out / "images.csv").open()))
    assert row["content"] == hashlib.sha1((png / "x.png").read_bytes()).hexdigest()[:16]
    # an unchanged image is not read again, its fingerprint kept
    assert _run("convert", "-i", tmp_path / "ann", "--images", png, "-o", out) == 0
    assert next(csv.DictReader((out / "images.csv").open()))["content"] == row["content"]


@pytest.fixture(scope="module")
def six_lumbar(tmp_path_factory):
    """A phantom spine with a sixth lumbar vertebra: its lumbar and sacral outlines, top down,
    and the project it came from (with its PNGs)."""
    import cv2
    import pydicom

    root = tmp_path_factory.mktemp("six")
    generate(PhantomConfig(n=10, seed=3, height=320, width=128, transitional_share=1.0,
                           burned_in_share=0.0), root, workers=1)
    truth = json.loads((root / "truth.json").read_text())
    (root / "png").mkdir()
    for uid, t in truth.items():
        px = pydicom.dcmread(root / t["dicom"]).pixel_array
        cv2.imwrite(str(root / "png" / f"{uid}.png"), (px >> 4).astype(np.uint8))
    for meta in read_via(root / "annotations" / "via_project.json")[1]:
        if truth[meta.filename.removesuffix(".png")]["transitional"] == "six_lumbar":
            outs = [Outline(r.attributes["class"], r.xs, r.ys, r.index) for r in meta.regions
                    if r.attributes["class"] in ("lumbar", "sacrum")]
            return sorted(outs, key=lambda o: np.mean(o.ys)), root
    raise AssertionError("no six-lumbar spine drawn")


def _levelled(outlines):
    outs = [Outline(o.cls, o.xs, o.ys, o.region) for o in outlines]
    assign_levels(outs)
    return outs


def test_a_transitional_spine_reaches_a_consensus_of_six_unlevelled_lumbar(six_lumbar):
    """One reader draws six lumbar vertebrae (unlevelled: which is L5 cannot be told), another
    misses the top one (five, levelled one too high): their outlines are matched by IoU, not by
    level, so the consensus has six lumbar vertebrae, not eleven, and no level is guessed."""
    spine, _ = six_lumbar
    assert sum(o.cls == "lumbar" for o in spine) == 6
    six, five = _levelled(spine), _levelled(spine[1:])
    assert {o.level for o in six if o.cls == "lumbar"} == {None}
    assert sorted(o.level for o in five if o.cls == "lumbar") == ["L1", "L2", "L3", "L4", "L5"]
    for readers in ({"a": six, "b": five}, {"a": six, "b": five, "c": _levelled(spine)}):
        out, gaps = consensus_with_gaps(readers)
        lumbar = [o for o in out if o.cls == "lumbar"]
        assert len(lumbar) == 6 and {o.level for o in lumbar} == {None}, gaps
        assert [o.level for o in out if o.cls == "sacrum"] == ["S1"] and gaps == []


def test_a_transitional_spine_is_a_truth_agreement_accepts(six_lumbar, tmp_path):
    """The truth given to agreement (the demo's double reads) may hold a six-lumbar spine: a
    count of vertebrae is anatomy, not damage of the yardstick."""
    from converters.annotations.agreement import write_agreement
    from converters.annotations.convert import ConvertConfig
    from converters.annotations.readers import ReaderFile

    _, root = six_lumbar
    via = root / "annotations" / "via_project.json"
    summary = write_agreement([ReaderFile("r1", via), ReaderFile("r2", via)], root / "png",
                              tmp_path / "agreement", ConvertConfig(qa=False), truth=via)
    assert summary["against_truth"]["r1"]["images"] == 10


def test_more_lumbar_vertebrae_than_five_are_reported_whatever_the_study_expects(six_lumbar,
                                                                                tmp_path):
    """convert.expected_lumbar 6: a six-lumbar spine is what was expected, but its levels are
    still left unassigned, and convert says so."""
    from converters.annotations.convert import ConvertConfig, convert

    _, root = six_lumbar
    report = convert([root / "annotations" / "via_project.json"], root / "png", tmp_path / "out",
                     ConvertConfig(qa=False, expected_lumbar=6))
    unassigned = {p.image for p in report.problems
                  if p.kind == "lumbar_count" and "levels not assigned" in p.message}
    truth = json.loads((root / "truth.json").read_text())
    assert unassigned == {f"{uid}.png" for uid, t in truth.items()
                          if t["transitional"] == "six_lumbar"}
