"""Proposals back to VIA (converters/annotations/proposals.py, train/infer/propose.py, spinepipe
propose): masks to polygons, the review order, the VIA project's keys, and the annotators'
corrections read back by convert."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from shapely.geometry import Polygon

from converters.annotations.coco import flat, mask_outline, rasterize
from converters.annotations.proposals import (PROPOSAL_ATTRIBUTE, REGION_ID, Proposal,
                                              ProposedRegion, corrections, mark_fused,
                                              mask_polygon, polygon_iou, read_proposal, review,
                                              simplify, via_images)
from converters.annotations.via_project import polygon_region
from converters.annotations.via import read_via

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


def _vertebra(h=200, w=120, cx=60, cy=100, angle=12.0) -> np.ndarray:
    """A tilted, slightly waisted vertebral body."""
    box = cv2.boxPoints(((cx, cy), (70, 48), angle))
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    cv2.ellipse(m, (cx, int(cy - 30)), (20, 8), angle, 0, 360, 0, -1)   # concave endplate
    return m.astype(bool)


@pytest.mark.parametrize("max_points", [6, 15, 40])
def test_mask_polygon_fits_within_its_vertex_budget(max_points):
    m = _vertebra()
    xs, ys, fit = mask_polygon(m, max_points)
    assert 3 <= len(xs) <= max_points and all(isinstance(v, int) for v in xs + ys)
    assert 0 <= min(xs) and max(xs) <= m.shape[1] and 0 <= min(ys) and max(ys) <= m.shape[0]
    drawn = rasterize(flat(xs, ys), *m.shape).astype(bool)
    iou = (drawn & m).sum() / (drawn | m).sum()
    assert fit == pytest.approx(iou)
    assert iou >= {6: 0.85, 15: 0.93, 40: 0.95}[max_points]


def test_mask_polygon_traces_pixel_edges_not_centres():
    """A 10 x 10 square of pixels is the polygon (x0, y0)-(x0+10, y0+10), not 9 x 9."""
    m = np.zeros((30, 30), bool)
    m[5:15, 8:18] = True
    xs, ys, fit = mask_polygon(m, 15)
    assert sorted(set(xs)) == [8, 18] and sorted(set(ys)) == [5, 15] and fit == 1.0
    assert mask_polygon(np.zeros((5, 5), bool), 15) is None


def _ragged(seed: int) -> np.ndarray:
    """A tiny model's mask: a few overlapping ellipses with pixels missing here and there."""
    rng = np.random.default_rng(seed)
    m = np.zeros((60, 60), np.uint8)
    for _ in range(rng.integers(3, 8)):
        centre = (int(rng.integers(15, 45)), int(rng.integers(15, 45)))
        axes = (int(rng.integers(2, 15)), int(rng.integers(1, 6)))
        cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return (m > 0) & (rng.random(m.shape) > 0.15)


def test_mask_polygon_never_crosses_itself_nor_exceeds_its_budget():
    """Douglas-Peucker crosses a ragged outline, and the outline of two squares touching at a
    corner (one 8-connected region) is a figure eight: what reaches VIA must still be one
    simple polygon within max_points, or convert would split it (the round trip's IoU)."""
    pinch = np.zeros((30, 30), bool)
    pinch[2:12, 2:12] = pinch[12:20, 12:20] = True
    masks = [pinch] + [_ragged(seed) for seed in range(300)]
    crossed = 0
    for m in masks:
        outline = polygon_region(simplify(mask_outline(m), 12))
        crossed += not Polygon(list(zip(outline.xs, outline.ys))).is_valid
        xs, ys, fit = mask_polygon(m, 12)
        assert 3 <= len(xs) <= 12 and Polygon(list(zip(xs, ys))).is_valid
        assert 0 < fit <= 1
    assert crossed >= 5          # the repair is what is tested, not Douglas-Peucker's luck
    xs, ys, _ = mask_polygon(pinch, 12)
    assert sorted(set(xs)) == [2, 12] and sorted(set(ys)) == [2, 12]   # the larger square


def _spine(n_lumbar=5, sacrum=True, score=0.95) -> list[ProposedRegion]:
    regions = [ProposedRegion("lumbar", [0, 10, 10], [0, 0, 10], score, f"L{5 - k}")
               for k in range(n_lumbar)]
    if sacrum:
        regions.append(ProposedRegion("sacrum", [0, 10, 10], [20, 20, 30], score, "S1"))
    return regions


def test_review_puts_missing_and_extra_vertebrae_first():
    cases = {"ok.png": _spine(), "low.png": _spine(score=0.31), "missing.png": _spine(4),
             "extra.png": _spine(6), "nosacrum.png": _spine(sacrum=False),
             "overlap.png": _spine()}
    props = []
    for name, regions in cases.items():
        p = Proposal(name, 100, 60, 200, regions)
        review(p, overlapping=["L4/L5"] if name == "overlap.png" else [],
               disagreement=0.4 if name == "low.png" else None, instance_model=True)
        props.append(p)
    order = [im.filename for im in via_images(props, class_attribute="class", model="m")]
    assert set(order[:3]) == {"missing.png", "extra.png", "nosacrum.png"}
    assert order[3:] == ["low.png", "overlap.png", "ok.png"]
    reasons = {p.filename: "; ".join(p.reasons) for p in props}
    assert "4 lumbar + 1 sacrum" in reasons["missing.png"]
    assert "lowest instance score 0.31" in reasons["low.png"] and "runs disagree" in reasons["low.png"]
    assert reasons["overlap.png"] == "overlapping L4/L5" and reasons["ok.png"] == ""


def test_a_fused_blob_is_proposed_as_its_bodies_and_flagged():
    """A semantic model's L3 and L4 joined across their disc: with ``measures.split_fused``
    each is its own polygon (cut in the disc), L1-L5 and S1 each once, the image ranked up
    for review ('fused blob cut into L3, L4'); without, one polygon flagged fused and the
    levels above it shifted (L1 missing)."""
    from train.evaluation.recognition import components
    from train.infer.propose import _regions

    mask = np.zeros((520, 300), np.uint8)
    for top in (40, 112, 184, 256, 328):                  # 60 px bodies, 12 px discs
        mask[top:top + 60, 100:180] = 1
    mask[244:256, 120:160] = 1                             # L3-L4 joined by a neck
    cv2.fillPoly(mask, [np.array([[95, 400], [185, 400], [170, 500], [110, 480]])], 2)
    inst = components(mask, {"lumbar": 1, "sacrum": 2})
    for split in (True, False):
        regions, areas = _regions(inst, 15, split=split)
        mark_fused(regions, areas)
        levels = sorted(r.level for r in regions if r.level)
        prop = Proposal("a.png", 1, 300, 520, regions)
        review(prop, overlapping=[], disagreement=None, instance_model=False)
        if split:
            assert levels == ["L1", "L2", "L3", "L4", "L5", "S1"]
            cut = sorted((r for r in regions if r.cut), key=lambda r: min(r.ys))
            assert [r.level for r in cut] == ["L3", "L4"] and not any(r.fused for r in regions)
            # cut in the disc's middle (row 250), each trimmed by half the disc (6 px)
            assert abs(max(cut[0].ys) - 244) <= 1 and abs(min(cut[1].ys) - 256) <= 1
            assert all(len(r.xs) <= 15 and r.mask_iou > 0.95 for r in cut)
            assert prop.reasons == ["fused blob cut into L3, L4"] and prop.score == 0.5
        else:
            assert levels == ["L2", "L3", "L4", "L5", "S1"]
            assert [r.level for r in regions if r.fused] == ["L4"]
            assert "4 lumbar + 1 sacrum" in prop.reasons[0]


def test_corrections_of_an_edited_project():
    prop = Proposal("a.png", 100, 60, 200, _spine())
    image = via_images([prop], class_attribute="class", model="m")[0]
    proposed = read_proposal(image.file_attributes[PROPOSAL_ATTRIBUTE], "f.json", "a.png")
    assert [p.id for p in proposed] == [r.attributes[REGION_ID] for r in image.regions]
    from converters.annotations.via import AnnotatedRegion
    final = [AnnotatedRegion(i, "polygon", list(r.xs), list(r.ys), dict(r.attributes))
             for i, r in enumerate(image.regions)]
    final[0].xs = [0, 12, 12]                       # a point moved
    del final[2]                                    # a region deleted
    final.append(AnnotatedRegion(9, "polygon", [0, 5, 5], [40, 40, 50], {"class": "lumbar"}))
    final.append(AnnotatedRegion(10, "polygon", list(final[1].xs), list(final[1].ys),
                            dict(final[1].attributes)))   # a copy keeps the id: added
    rows = corrections("a.png", proposed, final, "class")
    status = {(r["proposal"], r["status"]) for r in rows}
    assert ("p1", "edited") in status and ("p2", "unchanged") in status
    assert ("p3", "deleted") in status and sum(r["status"] == "added" for r in rows) == 2
    edited = next(r for r in rows if r["proposal"] == "p1")
    assert float(edited["iou"]) == pytest.approx(polygon_iou([0, 10, 10], [0, 0, 10],
                                                             [0, 12, 12], [0, 0, 10]), abs=1e-4)


@pytest.mark.parametrize("value", ["", "{", "[]", '{"regions": [{"id": 1}]}',
                                   '{"regions": [{"id": "p1", "class": "lumbar", "x": [1, 2], "y": [1]}]}',
                                   '{"regions": [{"id": "p1", "class": "lumbar", "x": ["a"], "y": [1]}]}'])
def test_a_tampered_proposal_record_is_one_clear_error(value):
    from converters.core.errors import InvalidViaError
    with pytest.raises(InvalidViaError, match="spinepipe_proposal.*f.json|f.json.*spinepipe_proposal"):
        read_proposal(value, "f.json", "a.png")


# --------------------------------------------------------------------------------------------
# the command, on a tiny trained run


TINY = {"img_scale": [96, 240], "crop_size": [240, 96], "models": {
    "mask_rcnn": {"options": {"model.backbone.depth": 18,
                              "model.neck.in_channels": [64, 128, 256, 512],
                              "train_cfg.max_epochs": 2, "train_cfg.val_interval": 1}},
    "unet": {"options": {"model.backbone.base_channels": 8, "model.decode_head.in_channels": 8,
                         "model.decode_head.channels": 8, "model.auxiliary_head.in_channels": 16,
                         "model.auxiliary_head.channels": 8, "train_cfg.max_iters": 4,
                         "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2}}}}
HELD_OUT = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project whose annotator left HELD_OUT images unannotated (their true polygons kept
    apart in holdout.json), with a tiny Mask R-CNN (folds 0 and 1) and U-Net trained on the
    rest."""
    import yaml

    from conftest import ingest_chain
    from converters.annotations.convert import ConvertConfig, convert
    from converters.phantom.writing import PhantomConfig, generate
    from converters.annotations.split import SplitConfig, write_splits
    root = tmp_path_factory.mktemp("propose")
    generate(PhantomConfig(n=14, seed=5, height=240, width=96, burned_in_share=0,
                           overlap_share=0.8), root / "raw", workers=1)
    ingest_chain(root / "raw", root)
    project = json.loads((root / "via.json").read_text())
    meta = project["_via_img_metadata"]
    held = sorted(meta)[-HELD_OUT:]
    truth = {**project, "_via_img_metadata": {k: meta[k] for k in held},
             "_via_image_id_list": held}
    (root / "holdout.json").write_text(json.dumps(truth))
    (root / "annotations").mkdir()
    project["_via_img_metadata"] = {k: v for k, v in meta.items() if k not in held}
    project["_via_image_id_list"] = list(project["_via_img_metadata"])
    (root / "annotations" / "via.json").write_text(json.dumps(project))
    convert([root / "annotations" / "via.json"], root / "png", root / "processed",
            ConvertConfig(qa=False))
    write_splits(root / "processed", root / "splits", SplitConfig(k=2, max_test_fraction=0.15))
    params = {"train": {"preset": "tiny", "images": str(root / "png"),
                        "masks": str(root / "processed" / "masks"),
                        "splits": str(root / "splits"), "presets": {"tiny": TINY}},
              "propose": {"enabled": True, "max_points": 12},
              "postprocess": {"score_thr": 0.05}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for model, fold in (("mask_rcnn", "0"), ("mask_rcnn", "1"), ("unet", "0")):
        proc = subprocess.run([SPINEPIPE, "train", "--model", model, "--fold", fold, "--quiet"],
                              capture_output=True, text=True, cwd=root, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root, [meta[k]["filename"] for k in held]


def _propose(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPINEPIPE, "propose", "--images", "png", *args, "--quiet"],
                          capture_output=True, text=True, cwd=root, timeout=600)


def test_proposals_load_as_a_via_project_in_review_order(trained):
    root, held = trained
    proc = _propose(root, "--model", "mask_rcnn", "--fold", "0", "--fold", "1",
                    "--only-unannotated", "annotations", "--truth", "holdout.json",
                    "--via-image-path", "/data/png", "--output", "out/proposals.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith("propose: 3 images") and "mean IoU with the truth" in proc.stderr
    project = json.loads((root / "out" / "proposals.json").read_text())
    assert {"_via_settings", "_via_img_metadata", "_via_attributes"} <= set(project)
    assert project["_via_settings"]["core"]["default_filepath"] == "/data/png/"
    region_attrs = project["_via_attributes"]["region"]
    assert set(region_attrs["class"]["options"]) >= {"lumbar", "sacrum"}
    assert {"level", "source", "score", REGION_ID} <= set(region_attrs)
    meta = project["_via_img_metadata"]
    assert sorted(im["filename"] for im in meta.values()) == sorted(held)
    for key, im in meta.items():
        assert {"filename", "size", "regions", "file_attributes"} <= set(im)
        assert key == im["filename"] + str(im["size"])
        assert im["size"] == (root / "png" / im["filename"]).stat().st_size
        h, w = cv2.imread(str(root / "png" / im["filename"]), cv2.IMREAD_UNCHANGED).shape
        for r in im["regions"]:
            s = r["shape_attributes"]
            assert s["name"] == "polygon" and 3 <= len(s["all_points_x"]) <= 12
            assert all(0 <= x <= w for x in s["all_points_x"])
            assert all(0 <= y <= h for y in s["all_points_y"])
            assert r["region_attributes"]["source"] == "model"
            assert r["region_attributes"]["class"] in ("lumbar", "sacrum")
    worklist = list(csv.DictReader((root / "out" / "worklist.csv").open()))
    assert [row["file_name"] for row in worklist] == \
        [meta[k]["filename"] for k in project["_via_image_id_list"]]
    scores = [float(row["score"]) for row in worklist]
    assert scores == sorted(scores, reverse=True)
    summary = json.loads((root / "out" / "proposals_summary.json").read_text())
    assert summary["runs"] == ["mask_rcnn fold 0", "mask_rcnn fold 1"]
    assert summary["truth_images"] == 3 and 0 <= summary["truth_mean_iou"] <= 1
    assert read_via(root / "out" / "proposals.json")[0] == "via2-project"


def test_a_semantic_model_proposes_its_components(trained):
    root, held = trained
    proc = _propose(root, "--model", "unet", "--fold", "0", "--only-unannotated",
                    "annotations", "--output", "sem/proposals.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    project = json.loads((root / "sem" / "proposals.json").read_text())
    assert len(project["_via_img_metadata"]) == HELD_OUT
    for im in project["_via_img_metadata"].values():
        for r in im["regions"]:
            assert r["region_attributes"]["score"] == "1.000"   # components have no score


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--model", "yolact"], "trained run incomplete"),
    (["--images", "annotations"], "no PNG found"),
])
def test_propose_errors_are_one_line(trained, args, message):
    root, _ = trained
    proc = _propose(root, *args, "--output", "bad/proposals.json")
    assert proc.returncode == 1 and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (root / "bad" / "proposals.json").exists()


def test_nothing_left_to_propose_is_an_empty_project_not_a_failure(trained):
    """Once every image is annotated, the DVC stage still succeeds."""
    root, _ = trained
    proc = _propose(root, "--only-unannotated", "annotations", "--only-unannotated",
                    "holdout.json", "--output", "none/proposals.json")
    assert proc.returncode == 0 and "no image to propose for" in proc.stderr
    assert json.loads((root / "none" / "proposals.json").read_text())["_via_img_metadata"] == {}


def test_disabled_stage_writes_an_empty_project(trained, tmp_path):
    root, _ = trained
    (tmp_path / "params.yaml").write_text("propose:\n  enabled: false\n")
    proc = subprocess.run([SPINEPIPE, "propose", "--images", str(root / "png"), "--output",
                           str(tmp_path / "p" / "proposals.json"), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "disabled" in proc.stderr
    assert json.loads((tmp_path / "p" / "proposals.json").read_text())["_via_img_metadata"] == {}


def _convert(root: Path, via: Path, out: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPINEPIPE, "convert", "--input", str(via), "--images", "png",
                           "--output", out, "--workers", "1", "--quiet"],
                          capture_output=True, text=True, cwd=root, timeout=600)


def test_the_round_trip_through_convert_and_what_annotators_changed(trained):
    """Untouched proposals convert back to the same instances; an annotator's edits (a point
    moved, a region deleted, one drawn) come out in correction.csv."""
    from shapely.geometry import Polygon
    from shapely.validation import make_valid
    root, _ = trained
    proc = _propose(root, "--model", "mask_rcnn", "--fold", "0", "--only-unannotated",
                    "annotations", "--output", "rt/proposals.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    project = json.loads((root / "rt" / "proposals.json").read_text())
    proposed = {(im["filename"], k): r["shape_attributes"]
                for im in project["_via_img_metadata"].values()
                for k, r in enumerate(im["regions"])}
    assert proposed, "the tiny model proposed nothing"
    proc = _convert(root, root / "rt" / "proposals.json", "rt_untouched")
    assert proc.returncode == 0, proc.stderr[-3000:]
    coco = json.loads((root / "rt_untouched" / "coco.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    assert len(coco["annotations"]) == len(proposed)
    for ann in coco["annotations"]:
        shape = proposed[(names[ann["image_id"]], ann["via_region"])]
        a = Polygon(np.asarray(ann["segmentation"][0]).reshape(-1, 2))
        b = make_valid(Polygon(list(zip(shape["all_points_x"], shape["all_points_y"]))))
        assert a.is_valid and a.intersection(b).area / a.union(b).area >= 0.99
    rows = list(csv.DictReader((root / "rt_untouched" / "correction.csv").open()))
    assert len(rows) == len(proposed) and {r["status"] for r in rows} == {"unchanged"}
    assert "proposals: " + f"{len(proposed)} unchanged" in proc.stderr

    # the annotator: moves a point of a region, deletes another region (of the same image when
    # it has two, else of the next image with one: the tiny model's proposals vary from run to
    # run) and draws a new one (no proposal id: VIA gives it the attribute defaults)
    images = [v for v in project["_via_img_metadata"].values() if v["regions"]]
    images.sort(key=lambda v: -len(v["regions"]))
    assert sum(len(v["regions"]) for v in images) >= 2, "the tiny model proposed one region"
    im = images[0]
    gone_from = im if len(im["regions"]) >= 2 else images[1]
    moved = im["regions"][0]["shape_attributes"]
    before = Polygon(zip(moved["all_points_x"], moved["all_points_y"]))
    moved["all_points_x"][0] += 6
    after = Polygon(zip(moved["all_points_x"], moved["all_points_y"]))
    deleted_id = gone_from["regions"][-1]["region_attributes"][REGION_ID]
    moved_id = im["regions"][0]["region_attributes"][REGION_ID]
    del gone_from["regions"][-1]
    xs = moved["all_points_x"]
    im["regions"].append({"shape_attributes": {"name": "polygon",
                                               "all_points_x": [min(xs), min(xs) + 8, min(xs) + 8],
                                               "all_points_y": [2, 2, 10]},
                          "region_attributes": {"class": "lumbar", "level": "", "source": "",
                                                "score": "", REGION_ID: ""}})
    (root / "rt" / "edited.json").write_text(json.dumps(project))
    proc = _convert(root, root / "rt" / "edited.json", "rt_edited")
    assert proc.returncode == 0, proc.stderr[-3000:]
    every = list(csv.DictReader((root / "rt_edited" / "correction.csv").open()))
    rows = [r for r in every if r["file_name"] == im["filename"]]
    status = {(r["file_name"], r["proposal"]): r["status"] for r in every if r["proposal"]}
    assert status[(im["filename"], moved_id)] == "edited"
    assert status[(gone_from["filename"], deleted_id)] == "deleted"
    assert all(s == "unchanged" for k, s in status.items()
               if k not in ((im["filename"], moved_id), (gone_from["filename"], deleted_id)))
    assert [r["status"] for r in rows if not r["proposal"]] == ["added"]
    edited = next(r for r in rows if r["proposal"] == moved_id)
    # the IoU of the proposal and the annotator's polygon, as shapely computes it from the two
    # (the move may fold the polygon: convert repairs it with make_valid, so does this)
    before, after = (make_valid(g) if not g.is_valid else g for g in (before, after))
    expected = before.intersection(after).area / before.union(after).area
    assert 0 < float(edited["iou"]) < 1 and float(edited["iou"]) == pytest.approx(expected,
                                                                               abs=0.01)
    assert "1 edited, 1 added, 1 deleted" in proc.stderr
