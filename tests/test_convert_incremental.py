"""Incremental re-conversion gives what a fresh conversion gives: the class of defect guarded is
a stale output kept by a re-run (a mask, overlap map or QA overlay of an earlier polygon, label
or image kept because a file of that name already exists, the "done" check trusting it).

One VIA project of the small phantom is converted, then edited as annotators and curators do
between two runs (a polygon redrawn, a region deleted, a label changed, an image replaced by
one of another size), and converted again into the same folder. The re-run's masks, overlap
maps, QA overlays and COCO file must equal those of a fresh conversion of the edited project,
and each edit must show in the pixels where it was made (drawn here with OpenCV from the VIA
polygons, independently of the product's rasterizer).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ingest_chain
from converters.annotations.convert import ConvertConfig, convert

LUMBAR, SACRUM = 1, 2


def _regions(via: dict, name: str) -> list[dict]:
    meta = [m for m in via["_via_img_metadata"].values() if m["filename"] == name]
    assert len(meta) == 1, name
    return meta[0]["regions"]


def _lumbar(via: dict, name: str) -> list[int]:
    """Indexes of the image's lumbar vertebrae (there are five in the phantom)."""
    found = [i for i, r in enumerate(_regions(via, name))
             if r["region_attributes"]["class"] == "lumbar"]
    assert len(found) >= 2, name
    return found


def _points(region: dict) -> np.ndarray:
    shape = region["shape_attributes"]
    return np.array([shape["all_points_x"], shape["all_points_y"]], dtype=float).T


def _fill(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The polygon as a boolean image (OpenCV, vertices rounded)."""
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(points).astype(np.int32)], 1)
    return out.astype(bool)


def _inside_only(via: dict, name: str, index: int, shape: tuple[int, int],
                 points: np.ndarray | None = None) -> np.ndarray:
    """Pixels well inside region ``index`` (or ``points``) and well away from every other
    region of the image: 2 pixels of margin, so no rasterization convention matters."""
    kernel = np.ones((5, 5), np.uint8)
    regions = _regions(via, name)
    own = _fill(_points(regions[index]) if points is None else points, shape)
    others = np.zeros(shape, bool)
    for i, r in enumerate(regions):
        if i != index:
            others |= _fill(_points(r), shape)
    inner = cv2.erode(own.astype(np.uint8), kernel).astype(bool)
    return inner & ~cv2.dilate(others.astype(np.uint8), kernel).astype(bool)


def _mask(out: Path, name: str) -> np.ndarray:
    mask = cv2.imread(str(out / "masks" / name), cv2.IMREAD_UNCHANGED)
    assert mask is not None, name
    return mask


def _files(out: Path) -> dict[str, bytes]:
    """Every rendered output (masks, overlap maps, QA overlays and sheets) by relative path."""
    found = {str(p.relative_to(out)): p.read_bytes()
             for d in ("masks", "overlaps", "qa") for p in sorted((out / d).glob("*.png"))}
    assert found
    return found


def _coco(out: Path) -> dict:
    data = json.loads((out / "coco.json").read_text())
    return {k: data[k] for k in ("images", "annotations", "categories")}


@pytest.fixture(scope="module")
def edited(small_phantom, tmp_path_factory):
    """First run, the four edits (one image each), the re-run in place, a fresh run."""
    root = tmp_path_factory.mktemp("incremental")
    ingest_chain(small_phantom, root)
    via = json.loads((root / "via.json").read_text())
    names = sorted(m["filename"] for m in via["_via_img_metadata"].values())
    assert len(names) >= 4
    first = convert([root / "via.json"], root / "png", root / "out", ConvertConfig())
    assert first.rendered == len(names)
    before = {n: _mask(root / "out", n) for n in names}
    old_via = json.loads(json.dumps(via))
    moved, deleted, relabelled, replaced = names[:4]
    # a polygon redrawn: a vertebra shrunk to 55 % around its centre
    region = _regions(via, moved)[_lumbar(via, moved)[0]]
    pts = _points(region)
    pts = pts.mean(axis=0) + 0.55 * (pts - pts.mean(axis=0))
    region["shape_attributes"]["all_points_x"] = [round(x, 1) for x in pts[:, 0]]
    region["shape_attributes"]["all_points_y"] = [round(y, 1) for y in pts[:, 1]]
    _regions(via, deleted).pop(_lumbar(via, deleted)[1])   # a vertebra deleted
    lumbar = _lumbar(via, relabelled)
    _regions(via, relabelled)[lumbar[0]]["region_attributes"]["class"] = "sacrum"
    (root / "via.json").write_text(json.dumps(via))
    # an image replaced by another of the same study: 24 columns wider, inverted
    image = cv2.imread(str(root / "png" / replaced), cv2.IMREAD_UNCHANGED)
    wider = np.pad(255 - image, ((0, 0), (0, 24)))
    assert cv2.imwrite(str(root / "png" / replaced), wider)
    second = convert([root / "via.json"], root / "png", root / "out", ConvertConfig())
    fresh = convert([root / "via.json"], root / "png", root / "fresh", ConvertConfig())
    assert second.images == fresh.images == len(names)
    return {"root": root, "via": via, "old_via": old_via, "before": before,
            "moved": (moved, _lumbar(old_via, moved)[0], pts),
            "deleted": (deleted, _lumbar(old_via, deleted)[1]),
            "relabelled": (relabelled, lumbar[0]), "replaced": (replaced, wider.shape)}


def test_a_rerun_writes_what_a_fresh_conversion_writes(edited):
    """Every mask, overlap map, QA overlay and the COCO file of the re-run equal a fresh
    conversion's of the edited project (a kept stale output differs)."""
    out, fresh = edited["root"] / "out", edited["root"] / "fresh"
    got, want = _files(out), _files(fresh)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    assert _coco(out) == _coco(fresh)


def test_a_redrawn_polygon_shows_in_the_rerun_mask(edited):
    name, index, pts = edited["moved"]
    after = _mask(edited["root"] / "out", name)
    before = edited["before"][name]
    # the ring the polygon gave up, away from the new outline and from other vertebrae
    old_only = _inside_only(edited["old_via"], name, index, after.shape)
    new = cv2.dilate(_fill(pts, after.shape).astype(np.uint8), np.ones((5, 5), np.uint8))
    ring = old_only & ~new.astype(bool)
    assert ring.sum() > 50
    assert (before[ring] == LUMBAR).all()
    assert (after[ring] == 0).all()
    kept = _inside_only(edited["via"], name, index, after.shape, pts)
    assert kept.sum() > 20 and (after[kept] == before[kept]).all()


def test_a_deleted_region_leaves_the_rerun_mask_and_coco(edited):
    name, index = edited["deleted"]
    after = _mask(edited["root"] / "out", name)
    gone = _inside_only(edited["old_via"], name, index, after.shape)
    assert gone.sum() > 50
    assert (edited["before"][name][gone] == LUMBAR).all() and (after[gone] == 0).all()
    coco = _coco(edited["root"] / "out")
    image_id = [i["id"] for i in coco["images"] if i["file_name"] == name][0]
    lumbar = [a for a in coco["annotations"] if a["image_id"] == image_id
              and a["category_id"] == LUMBAR]
    assert len(lumbar) == len(_lumbar(edited["old_via"], name)) - 1


def test_a_changed_label_changes_the_rerun_mask_values(edited):
    name, index = edited["relabelled"]
    after = _mask(edited["root"] / "out", name)
    inside = _inside_only(edited["via"], name, index, after.shape)
    assert inside.sum() > 50
    assert (edited["before"][name][inside] == LUMBAR).all()
    assert (after[inside] == SACRUM).all()
    coco = _coco(edited["root"] / "out")
    image_id = [i["id"] for i in coco["images"] if i["file_name"] == name][0]
    sacrum = [a for a in coco["annotations"] if a["image_id"] == image_id
              and a["category_id"] == SACRUM]
    assert len(sacrum) == sum(r["region_attributes"]["class"] == "sacrum"
                              for r in _regions(edited["via"], name)) >= 2


def test_a_replaced_image_is_rendered_anew(edited):
    """A wider image under the same name: the mask and overlap map take its size, the COCO
    image its width, the QA overlay its pixels."""
    name, shape = edited["replaced"]
    out = edited["root"] / "out"
    assert _mask(out, name).shape == shape[:2] != edited["before"][name].shape
    overlap = cv2.imread(str(out / "overlaps" / name), cv2.IMREAD_UNCHANGED)
    assert overlap.shape == shape[:2]
    coco = _coco(out)
    assert [(i["height"], i["width"]) for i in coco["images"] if i["file_name"] == name] \
        == [shape[:2]]
    qa = (out / "qa" / name).read_bytes()
    assert qa == (edited["root"] / "fresh" / "qa" / name).read_bytes()
