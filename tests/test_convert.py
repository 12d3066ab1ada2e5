"""VIA -> COCO + masks: pycocotools and the mm dataset classes read the outputs, areas agree
with rasters, the phantom's truth comes back, every VIA format gives the same COCO, each
validation problem is caught, bad files are one-line errors, re-runs touch only changes."""
from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import ingest_chain
from converters.annotations.coco import rasterize
from converters.annotations.convert import ConvertConfig, convert
from converters.core.errors import InvalidViaError

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


@pytest.fixture(scope="module")
def chain(small_phantom, tmp_path_factory):
    """The small phantom through anonymize and export, with its VIA mapped to the PNGs."""
    root = tmp_path_factory.mktemp("chain")
    exported = ingest_chain(small_phantom, root)
    convert([root / "via.json"], root / "png", root / "out", ConvertConfig())
    return root, exported


def _mean_ap(gt: COCO, dets: list[dict], iou_type: str) -> float:
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)  # loadRes edits them
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def test_pycocotools_scores_the_phantom_truth_against_the_converted_coco(chain, small_phantom):
    """pycocotools reads the converted COCO and scores detections made from the phantom's own
    polygons (its VIA file, not the converted output; classes as the design fixes them:
    lumbar 1, sacrum 2): AP 1 (IoU 0.50:0.95), masks and boxes. Without the sacrum
    detections, lumbar AP 1 and sacrum AP 0 average to exactly 0.5: a swapped category,
    a lost or moved polygon, an image mapped to the wrong id each give something else."""
    root, exported = chain
    via = json.loads((small_phantom / "annotations" / "via_project.json").read_text())
    gt = COCO(str(root / "out" / "coco.json"))
    assert len(gt.getImgIds()) == len(list((root / "png").glob("*.png"))) == len(exported)
    assert {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())} == {1: "lumbar", 2: "sacrum"}
    by_name = {i["file_name"]: i["id"] for i in gt.dataset["images"]}
    masks, boxes = [], []
    for uid, (png, _) in exported.items():
        for r in via["_via_img_metadata"][f"{uid}.png-1"]["regions"]:
            cls = r["region_attributes"]["class"]
            if cls not in ("lumbar", "sacrum"):
                continue
            xs, ys = r["shape_attributes"]["all_points_x"], r["shape_attributes"]["all_points_y"]
            det = {"image_id": by_name[png], "category_id": {"lumbar": 1, "sacrum": 2}[cls],
                   "score": 1.0}
            img = gt.imgs[by_name[png]]
            poly = [[float(v) for xy in zip(xs, ys) for v in xy]]
            rle = mask_utils.merge(mask_utils.frPyObjects(poly, img["height"], img["width"]))
            masks.append({**det, "segmentation": rle})
            boxes.append({**det, "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
    assert len(masks) == len(gt.dataset["annotations"]) and {d["category_id"] for d in masks} == {1, 2}
    for iou_type, dets in (("segm", masks), ("bbox", boxes)):
        assert _mean_ap(gt, dets, iou_type) == pytest.approx(1.0), iou_type
        lumbar_only = [d for d in dets if d["category_id"] == 1]
        assert _mean_ap(gt, lumbar_only, iou_type) == pytest.approx(0.5), iou_type


def test_areas_agree_with_rasterized_masks(chain):
    root, _ = chain
    coco = json.loads((root / "out" / "coco.json").read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco["images"]}
    for ann in coco["annotations"]:
        poly = ann["segmentation"][0]
        raster = rasterize(poly, *sizes[ann["image_id"]]).sum()
        xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
        perimeter = np.hypot(np.diff(np.r_[xs, xs[0]]), np.diff(np.r_[ys, ys[0]])).sum()
        assert abs(raster - ann["area"]) <= perimeter / 2 + 4  # boundary pixels only
        x, y, w, h = ann["bbox"]
        assert x == xs.min() and y == ys.min() and w == xs.max() - x and h == ys.max() - y
        assert ann["iscrowd"] == 0


def test_converted_instances_equal_the_phantom_truth(chain, small_phantom):
    root, exported = chain
    truth = json.loads((small_phantom / "truth.json").read_text())
    via = json.loads((small_phantom / "annotations" / "via_project.json").read_text())
    coco = json.loads((root / "out" / "coco.json").read_text())
    by_name = {i["file_name"]: i["id"] for i in coco["images"]}
    for uid, (png, _) in exported.items():
        regions = via["_via_img_metadata"][f"{uid}.png-1"]["regions"]
        anns = sorted((a for a in coco["annotations"] if a["image_id"] == by_name[png]),
                      key=lambda a: a["via_region"])
        expected = [(k, r) for k, r in enumerate(regions)
                    if r["region_attributes"]["class"] in ("lumbar", "sacrum")]
        assert [a["via_region"] for a in anns] == [k for k, _ in expected]
        for ann, (k, region) in zip(anns, expected):
            s = region["shape_attributes"]
            assert ann["segmentation"][0] == [float(v) for xy in zip(s["all_points_x"], s["all_points_y"]) for v in xy]
            assert ann["level"] == truth[uid]["levels"][k]  # levels bottom-up from the sacrum
            assert ann["category_id"] == (1 if region["region_attributes"]["class"] == "lumbar" else 2)


def test_masks_overlaps_and_table(chain, small_phantom):
    root, exported = chain
    out = root / "out"
    coco = json.loads((out / "coco.json").read_text())
    truth = json.loads((small_phantom / "truth.json").read_text())
    png_to_uid = {png: uid for uid, (png, _) in exported.items()}
    rows = {r["file_name"]: r for r in csv.DictReader(io.StringIO((out / "images.csv").read_text()))}
    for img in coco["images"]:
        stem = Path(img["file_name"]).stem
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        overlap = cv2.imread(str(out / "overlaps" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (img["height"], img["width"]) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2} and {1, 2} <= set(np.unique(mask))
        lumbar = np.zeros(mask.shape, bool)
        for a in coco["annotations"]:
            if a["image_id"] == img["id"] and a["category_id"] == 1:
                lumbar |= rasterize(a["segmentation"][0], *mask.shape)
        assert ((mask == 1) <= lumbar).all()  # lumbar pixels are exactly the lumbar rasters...
        assert ((mask == 1) | (mask == 2))[lumbar].all()  # ...unless the sacrum wins
        t = truth[png_to_uid[img["file_name"]]]
        row = rows[img["file_name"]]
        assert int(row["overlap"]) == int(overlap.sum() > 0) == int(t["overlap"])
        assert int(row["overlap_area"]) == int(overlap.sum())
        assert int(row["implants"]) == int(t["implants"])
        assert img["n_implants"] == int(row["n_implants"]) and (img["n_implants"] > 0) == t["implants"]
        assert row["patient"] == img["file_name"].split("_")[0]
        assert (out / "qa" / f"{stem}.png").is_file()
    assert list((out / "qa").glob("contact_*.png"))


def test_mmdet_and_mmseg_datasets_load_the_outputs(chain):
    root, _ = chain
    from mmdet.datasets import CocoDataset
    from mmseg.datasets import BaseSegDataset
    coco = json.loads((root / "out" / "coco.json").read_text())
    det = CocoDataset(data_root=str(root), ann_file="out/coco.json",
                      data_prefix=dict(img="png/"), metainfo=dict(classes=("lumbar", "sacrum")),
                      pipeline=[], test_mode=True)
    assert len(det) == len(coco["images"])
    assert sum(len(det[i]["instances"]) for i in range(len(det))) == len(coco["annotations"])
    assert {ins["bbox_label"] for i in range(len(det)) for ins in det[i]["instances"]} == {0, 1}
    seg = BaseSegDataset(data_root=str(root), data_prefix=dict(img_path="png", seg_map_path="out/masks"),
                         img_suffix=".png", seg_map_suffix=".png",
                         metainfo=dict(classes=("background", "lumbar", "sacrum")), pipeline=[])
    assert len(seg) == len(coco["images"])
    for item in seg:
        m = cv2.imread(item["seg_map_path"], cv2.IMREAD_UNCHANGED)
        assert m.max() < 3


# ------------------------------------------------------------------------------------------
# every VIA format, one drawing

def _formats(via2: dict) -> dict[str, tuple[str, str]]:
    """The same drawing in each export format VIA writes: name -> (suffix, text)."""
    meta = via2["_via_img_metadata"]
    via1 = {k: {**v, "regions": {str(i): r for i, r in enumerate(v["regions"])},
                "fileref": "", "base64_img_data": ""} for k, v in meta.items()}
    options = {"0": "lumbar", "1": "sacrum", "2": "cage", "3": "screw", "4": "rod"}
    ids = {v: k for k, v in options.items()}
    files, views, metadata = {}, {}, {}
    for n, v in enumerate(meta.values(), 1):
        files[str(n)] = {"fid": n, "fname": v["filename"], "type": 2, "loc": 1, "src": v["filename"]}
        views[str(n)] = {"fid_list": [n]}
        for k, r in enumerate(v["regions"]):
            s = r["shape_attributes"]
            xy = [7] + [c for p in zip(s["all_points_x"], s["all_points_y"]) for c in p]
            metadata[f"{n}_{k}"] = {"vid": str(n), "flg": 0, "z": [], "xy": xy,
                                    "av": {"1": ids[r["region_attributes"]["class"]]}}
    via3 = {"project": {"pid": "__VIA_PROJECT_ID__", "data_format_version": "3.1.1",
                        "vid_list": list(views)},
            "config": {"file": {"loc_prefix": {"1": "", "2": "", "3": "", "4": ""}}, "ui": {}},
            "attribute": {"1": {"aname": "class", "anchor_id": "FILE1_Z0_XY1", "type": 3,
                                "desc": "", "options": options, "default_option_id": ""}},
            "file": files, "view": views, "metadata": metadata}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["filename", "file_size", "file_attributes", "region_count", "region_id",
                "region_shape_attributes", "region_attributes"])
    for v in meta.values():
        for k, r in enumerate(v["regions"]):
            w.writerow([v["filename"], v["size"], "{}", len(v["regions"]), k,
                        json.dumps(r["shape_attributes"]), json.dumps(r["region_attributes"])])
    return {"via2-project": (".json", json.dumps(via2)),
            "via2-annotations": (".json", json.dumps(meta)),
            "via1": (".json", json.dumps(via1)),
            "via3-project": (".json", json.dumps(via3)),
            "via-csv": (".csv", buf.getvalue())}


def test_every_via_format_gives_the_same_coco(chain, tmp_path):
    root, _ = chain
    via2 = json.loads((root / "via.json").read_text())
    results = {}
    for name, (suffix, text) in _formats(via2).items():
        path = tmp_path / f"{name}{suffix}"
        path.write_text(text)
        report = convert([path], root / "png", tmp_path / name, ConvertConfig(qa=False))
        assert report.formats[str(path)] == name
        coco = json.loads((tmp_path / name / "coco.json").read_text())
        results[name] = (coco["images"], [{k: v for k, v in a.items() if k != "via_file"}
                                          for a in coco["annotations"]])
        assert report.counts().get("size_mismatch", 0) == 0
    reference = results.pop("via2-project")
    for name, got in results.items():
        assert got == reference, name


# ------------------------------------------------------------------------------------------
# validation

def _one_image(tmp_path: Path, regions: list[dict], size: int | None = None,
               extra_files: tuple[str, ...] = ()) -> tuple[Path, Path]:
    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    cv2.imwrite(str(images / "a.png"), np.zeros((100, 60), np.uint8))
    for name in extra_files:
        cv2.imwrite(str(images / name), np.zeros((100, 60), np.uint8))
    real = (images / "a.png").stat().st_size
    meta = {"filename": "a.png", "size": real if size is None else size, "file_attributes": {},
            "regions": [{"shape_attributes": s, "region_attributes": {"class": c}}
                        for s, c in regions]}
    via = tmp_path / "via.json"
    via.write_text(json.dumps({"_via_img_metadata": {f"a.png{meta['size']}": meta}}))
    return via, images


def _poly(xs, ys):
    return {"name": "polygon", "all_points_x": xs, "all_points_y": ys}


GOOD = [(_poly([10, 30, 30, 10], [y, y, y + 10, y + 10]), "lumbar") for y in (5, 20, 35, 50, 65)] \
    + [(_poly([10, 40, 25], [80, 80, 98]), "sacrum")]


@pytest.mark.parametrize("region, kind", [
    ((_poly([1, 2, 1], [1, 1, 1]), "lumbar"), "too_few_points"),              # degenerate
    ((_poly([10, 30, 10, 30], [5, 15, 15, 5]), "lumbar"), "self_intersection"),  # bow tie
    ((_poly([-5, 30, 30, 10], [5, 5, 150, 15]), "lumbar"), "outside_image"),  # beyond edges
    ((_poly([10, 10, 30, 30, 10], [5, 5, 5, 15, 15]), "lumbar"), "repeated_points"),
    ((_poly([10, 30, 30], [5, 5, 15]), "thoracic"), "unknown_class"),         # not mapped
    (({"name": "point", "cx": 3, "cy": 4}, "lumbar"), "ignored_shape"),        # a point
    (({"name": "rect", "x": 1, "y": 2, "width": 5, "height": 6}, "lumbar"), "ignored_shape"),
])
def test_each_problem_is_reported_with_file_image_and_region(tmp_path, region, kind):
    via, images = _one_image(tmp_path, GOOD + [region])
    report = convert([via], images, tmp_path / "out", ConvertConfig(qa=False))
    found = [p for p in report.problems if p.kind == kind]
    assert found and found[0].image == "a.png" and found[0].region == len(GOOD)
    assert found[0].file == str(via)
    with pytest.raises(InvalidViaError, match=r"problem\(s\) with --strict.*image a.png"):
        convert([via], images, tmp_path / "strict", ConvertConfig(qa=False, strict=True))
    assert not (tmp_path / "strict").exists()  # nothing half-written


def test_repairs_keep_a_valid_polygon(tmp_path):
    bow_tie = (_poly([10, 30, 10, 30], [5, 15, 15, 5]), "lumbar")
    outside = (_poly([-5, 30, 30, 10], [5, 5, 150, 15]), "lumbar")
    via, images = _one_image(tmp_path, [bow_tie, outside])
    convert([via], images, tmp_path / "out", ConvertConfig(qa=False))
    anns = json.loads((tmp_path / "out" / "coco.json").read_text())["annotations"]
    from shapely.geometry import Polygon
    for a in anns:
        poly = Polygon(zip(a["segmentation"][0][0::2], a["segmentation"][0][1::2]))
        assert poly.is_valid and poly.area > 0
        assert min(a["segmentation"][0]) >= 0 and max(a["segmentation"][0][1::2]) <= 100


def test_shapes_to_polygons_option(tmp_path):
    rect = ({"name": "rect", "x": 10, "y": 5, "width": 20, "height": 10}, "lumbar")
    ellipse = ({"name": "ellipse", "cx": 30, "cy": 50, "rx": 10, "ry": 5, "theta": 0}, "sacrum")
    via, images = _one_image(tmp_path, [rect, ellipse])
    convert([via], images, tmp_path / "out", ConvertConfig(qa=False, shapes_to_polygons=True))
    anns = json.loads((tmp_path / "out" / "coco.json").read_text())["annotations"]
    assert anns[0]["area"] == 200 and anns[0]["bbox"] == [10, 5, 20, 10]
    assert anns[1]["area"] == pytest.approx(np.pi * 50, rel=0.02)


def test_image_level_problems(tmp_path):
    via, images = _one_image(tmp_path, GOOD[:3], size=12, extra_files=("b.png",))
    meta = json.loads(via.read_text())
    meta["_via_img_metadata"]["gone.png5"] = {"filename": "gone.png", "size": 5, "regions": [],
                                               "file_attributes": {}}
    via.write_text(json.dumps(meta))
    twin = tmp_path / "twin.json"
    twin.write_text(via.read_text())
    report = convert([via, twin], images, tmp_path / "out", ConvertConfig(qa=False))
    kinds = report.counts()
    for kind in ("size_mismatch", "missing_image", "unannotated_image", "duplicate_image",
                 "missing_sacrum", "lumbar_count"):
        assert kinds.get(kind), kind
    dup = [p for p in report.problems if p.kind == "duplicate_image"]
    assert dup[0].file == str(twin)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["counts"] == kinds


def test_implants_kept_only_when_asked(chain, tmp_path):
    root, _ = chain
    convert([root / "via.json"], root / "png", tmp_path / "out", ConvertConfig(keep_implants=True, qa=False))
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert {c["name"] for c in coco["categories"]} == {"lumbar", "sacrum", "cage", "screw", "rod"}
    assert any(a["category_id"] > 2 for a in coco["annotations"])


@pytest.mark.parametrize("text, message", [
    ('{"_via_img_metadata": {', "malformed JSON at line 1, column 24"),      # truncated
    ('{"something": 1}', "unknown VIA version"),                             # not VIA
    ('{"_via_img_metadata": {"x": {"regions": []}}}', "without key 'filename'"),  # missing key
    ('{"_via_img_metadata": {"a.png1": {"filename": "a.png", "regions": [{"shape_attributes": '
     '{"name": "polygon", "all_points_x": [1, 2, 3]}}]}}}', "without key all_points_y"),
])
def test_bad_via_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "img").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    proc = subprocess.run([SPINEPIPE, "convert", "--input", str(bad), "--images",
                           str(tmp_path / "img"), "--output", str(tmp_path / "out"), "--quiet",
                           "--params", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "bad.json" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_changing_one_annotation_reconverts_that_image_only(chain, tmp_path):
    root, _ = chain
    via = json.loads((root / "via.json").read_text())
    (tmp_path / "via.json").write_text(json.dumps(via))
    first = convert([tmp_path / "via.json"], root / "png", tmp_path / "out", ConvertConfig())
    assert first.rendered == first.images
    key = sorted(via["_via_img_metadata"])[0]
    via["_via_img_metadata"][key]["regions"][0]["shape_attributes"]["all_points_x"][0] += 1
    (tmp_path / "via.json").write_text(json.dumps(via))
    second = convert([tmp_path / "via.json"], root / "png", tmp_path / "out", ConvertConfig())
    assert second.rendered == 1
