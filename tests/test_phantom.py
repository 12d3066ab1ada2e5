"""The synthetic phantom: DICOM realism, VIA structure, determinism, anatomy."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from shapely.geometry import Polygon

from converters.annotations.coco import rasterize, flat
from converters.core.errors import InvalidConfigError
from converters.phantom.writing import PhantomConfig, generate

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime",
               "AccessionNumber", "InstitutionName", "ReferringPhysicianName",
               "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _files(root: Path) -> list[Path]:
    return sorted((root / "dicom").rglob("*.dcm"))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _via(root: Path) -> dict:
    return json.loads((root / "annotations" / "via_project.json").read_text())


def _polygons(meta: dict, cls: str) -> list[Polygon]:
    return [Polygon(zip(r["shape_attributes"]["all_points_x"], r["shape_attributes"]["all_points_y"]))
            for r in meta["regions"] if r["region_attributes"]["class"] == cls]


def test_dicom_objects_look_like_an_archive(small_phantom):
    files = _files(small_phantom)
    assert len(files) == 6
    patients = Counter()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert ds.BurnedInAnnotation in ("YES", "NO")
        for kw in IDENTIFYING:
            assert str(ds.data_element(kw).value), kw
        block = ds.private_block(0x0009, "SPINEPIPE PHANTOM")
        assert block[0x10].value == ds.PatientID  # the private tag leaks the ID, as real ones do
        px = ds.pixel_array
        assert px.shape == (320, 128) and px.dtype == np.uint16 and px.max() <= 4095
        assert f.parent.name == ds.AccessionNumber and f.parent.parent.name == ds.PatientID
        patients[ds.PatientID] += 1
    assert max(patients.values()) >= 2, "no patient with several images"


def test_shares_are_honoured(tmp_path):
    out, clean = tmp_path / "p", tmp_path / "clean"
    cfg = PhantomConfig(n=12, seed=5, height=256, width=128, monochrome1_share=0.5,
                        burned_in_share=0.5, dx_share=0.5)
    generate(cfg, out, workers=1)
    # the same images without burned-in text (each feature draws from its own stream)
    generate(dataclasses.replace(cfg, burned_in_share=0.0), clean, workers=1)
    clean_pixels = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).pixel_array
                    for f in _files(clean)}
    seen = Counter()
    for f in _files(out):
        ds = pydicom.dcmread(f)
        seen[ds.PhotometricInterpretation] += 1
        seen[ds.Modality] += 1
        seen["burned" if ds.BurnedInAnnotation == "YES" else "clean"] += 1
        changed = ds.pixel_array != clean_pixels[ds.SOPInstanceUID]
        if ds.BurnedInAnnotation == "YES":
            # the name is in the pixels, in the top-left corner: saturated white text
            assert changed[:40, :].sum() > 20 and not changed[40:, :].any()
            text = ds.pixel_array[changed]
            assert set(np.unique(text)) == {0 if ds.PhotometricInterpretation == "MONOCHROME1" else 4095}
        else:
            assert not changed.any()
    for key in ("MONOCHROME1", "MONOCHROME2", "CR", "DX", "burned", "clean"):
        assert seen[key] > 0, key


def test_via_project_has_the_structure_via2_writes(small_phantom):
    via = _via(small_phantom)
    assert set(via) == {"_via_settings", "_via_img_metadata", "_via_attributes",
                        "_via_data_format_version", "_via_image_id_list"}
    assert via["_via_data_format_version"].startswith("2.")
    assert via["_via_image_id_list"] == list(via["_via_img_metadata"])
    options = via["_via_attributes"]["region"]["class"]["options"]
    assert {"lumbar", "sacrum", "cage", "screw", "rod"} <= set(options)
    for image_id, meta in via["_via_img_metadata"].items():
        assert image_id == meta["filename"] + str(meta["size"])
        assert set(meta) == {"filename", "size", "regions", "file_attributes"}
        for r in meta["regions"]:
            shape = r["shape_attributes"]
            assert shape["name"] == "polygon"
            assert 4 <= len(shape["all_points_x"]) == len(shape["all_points_y"]) <= 15
            assert all(isinstance(v, int) for v in shape["all_points_x"] + shape["all_points_y"])
            assert r["region_attributes"]["class"] in options
        assert len(_polygons(meta, "lumbar")) == 5 and len(_polygons(meta, "sacrum")) == 1


def test_deterministic_and_independent_of_workers(tmp_path):
    cfg = PhantomConfig(n=4, seed=11, height=256, width=128)
    generate(cfg, tmp_path / "a", workers=1)
    generate(cfg, tmp_path / "b", workers=2)
    generate(PhantomConfig(n=4, seed=12, height=256, width=128), tmp_path / "c", workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("share, expect_overlap", [
    (1.0, True),   # every image has a collapsed disc: some neighbouring bodies overlap
    (0.0, False),  # no degenerated disc: bodies never overlap in projection
])
def test_degenerated_discs_make_vertebrae_overlap(tmp_path, share, expect_overlap):
    out = tmp_path / "p"
    generate(PhantomConfig(n=6, seed=2, height=320, width=128, overlap_share=share,
                           implant_share=0.0), out, workers=1)
    for meta in _via(out)["_via_img_metadata"].values():
        bodies = _polygons(meta, "lumbar") + _polygons(meta, "sacrum")
        bodies.sort(key=lambda p: p.centroid.y)
        overlaps = [a.intersection(b).area for a, b in zip(bodies, bodies[1:])]
        assert (max(overlaps) > 4.0) is expect_overlap, overlaps


def test_implants_are_drawn_bright_and_labelled(tmp_path):
    out = tmp_path / "p"
    generate(PhantomConfig(n=4, seed=4, height=640, width=256, implant_share=1.0,
                           repeat_patient_share=0.0, monochrome1_share=0.0), out, workers=1)
    truth = json.loads((out / "truth.json").read_text())
    via = _via(out)["_via_img_metadata"]
    for uid, t in truth.items():
        meta = via[f"{uid}.png-1"]
        classes = Counter(r["region_attributes"]["class"] for r in meta["regions"])
        assert t["implants"] and classes["screw"] >= 2 and classes["rod"] == 1
        px = pydicom.dcmread(out / t["dicom"]).pixel_array.astype(float)
        masks: dict[str, np.ndarray] = {}
        for r in meta["regions"]:
            s = r["shape_attributes"]
            cls = r["region_attributes"]["class"]
            inside = rasterize(flat(s["all_points_x"], s["all_points_y"]), *px.shape)
            masks[cls] = masks.get(cls, np.zeros(px.shape, bool)) | inside
        # metal outshines bone: the rod's median is brighter than nine in ten pixels of the
        # bodies (at the demo's size: at 320x128 the rod is 2-3 pixels wide and its edge pixels,
        # half soft tissue, pull its median below the bodies' bright cortex)
        metal = masks["rod"] | masks["screw"] | masks.get("cage", np.zeros(px.shape, bool))
        assert np.median(px[masks["rod"]]) > np.percentile(px[masks["lumbar"] & ~metal], 90)


def test_vertebrae_are_brighter_than_their_surroundings(small_phantom):
    truth = json.loads((small_phantom / "truth.json").read_text())
    via = _via(small_phantom)["_via_img_metadata"]
    for uid, t in truth.items():
        ds = pydicom.dcmread(small_phantom / t["dicom"])
        px = ds.pixel_array.astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = 4095 - px
        for poly in _polygons(via[f"{uid}.png-1"], "lumbar"):
            xs, ys = poly.exterior.xy
            inside = rasterize(flat(xs[:-1], ys[:-1]), *px.shape)
            ring_poly = poly.buffer(6).difference(poly.buffer(2))
            ring = np.zeros_like(inside)
            for g in getattr(ring_poly, "geoms", [ring_poly]):
                rx, ry = g.exterior.xy
                ring |= rasterize(flat(rx[:-1], ry[:-1]), *px.shape)
            ring &= ~inside
            assert px[inside].mean() > px[ring].mean() + 50


def test_thoracic_vertebra_leaves_room_above_l1(tmp_path):
    out = tmp_path / "p"
    generate(PhantomConfig(n=3, seed=8, height=320, width=128, thoracic_share=1.0), out, workers=1)
    for meta in _via(out)["_via_img_metadata"].values():
        l1 = min(_polygons(meta, "lumbar"), key=lambda p: p.centroid.y)
        assert l1.bounds[1] > 0.1 * 320  # the unannotated T12 is in the picture above L1


def test_real_study_size_works(tmp_path):
    generate(PhantomConfig(n=1, seed=1, height=2870, width=1100), tmp_path, workers=1)
    (f,) = _files(tmp_path)
    assert pydicom.dcmread(f).pixel_array.shape == (2870, 1100)


@pytest.mark.parametrize("kwargs", [
    {"n": 0},                     # nothing to generate
    {"height": 50},               # too small to draw a spine
    {"overlap_share": 1.5},       # a share is a probability
    {"transitional_share": -0.1},
    {"seed": -1},                 # numpy's generators take no negative seed
    {"dose": 0.0},                # no quanta, no image
    {"gas": float("nan")},
    {"rotation": 9.0},
])
def test_bad_configuration_is_refused(tmp_path, kwargs):
    with pytest.raises(InvalidConfigError):
        generate(PhantomConfig(**kwargs), tmp_path, workers=1)


def test_transitional_spines_are_recorded_and_a_sixth_lumbar_is_not_mislabelled(tmp_path):
    """truth.json records each lumbosacral transitional vertebra; an annotator who draws six
    lumbar vertebrae gets them reported (lumbar_count) with no lumbar level assigned: counted
    from the sacrum, every one would be a level too high."""
    import cv2

    from converters.annotations.convert import ConvertConfig, convert

    out = tmp_path / "p"
    generate(PhantomConfig(n=10, seed=3, height=320, width=128, transitional_share=1.0,
                           burned_in_share=0.0), out, workers=1)
    truth = json.loads((out / "truth.json").read_text())
    kinds = Counter(t["transitional"] for t in truth.values())
    assert kinds["six_lumbar"] and kinds["sacralized_L5"] and set(kinds) <= {
        "six_lumbar", "sacralized_L5"}
    pngs = tmp_path / "png"
    pngs.mkdir()
    for uid, t in truth.items():
        lumbar = [lv for lv, c in zip(t["levels"], t["classes"]) if c == "lumbar"]
        six = t["transitional"] == "six_lumbar"
        assert lumbar == [f"L{i}" for i in range(1, 7 if six else 6)]
        assert set(t["endplates"]) == {*lumbar, "S1"}
        assert (t["measures"] is None) is six   # no L1-S1 frame holds a sixth lumbar level
        px = pydicom.dcmread(out / t["dicom"]).pixel_array
        cv2.imwrite(str(pngs / f"{uid}.png"), (px >> 4).astype(np.uint8))
    report = convert([out / "annotations" / "via_project.json"], pngs, tmp_path / "coco",
                     ConvertConfig(qa=False))
    coco = json.loads((tmp_path / "coco" / "coco.json").read_text())
    names = {im["id"]: im["file_name"].removesuffix(".png") for im in coco["images"]}
    lumbar_id = next(c["id"] for c in coco["categories"] if c["name"] == "lumbar")
    levels: dict[str, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == lumbar_id:
            levels.setdefault(names[a["image_id"]], []).append(a["level"])
    counted = {p.image.removesuffix(".png") for p in report.problems
               if p.kind == "lumbar_count" and "levels not assigned" in p.message}
    for uid, t in truth.items():
        if t["transitional"] == "six_lumbar":
            assert levels[uid] == [None] * 6 and uid in counted
        else:   # a sacralized L5 is still drawn as the fifth lumbar vertebra: levels hold
            assert sorted(levels[uid]) == ["L1", "L2", "L3", "L4", "L5"] and uid not in counted


@pytest.mark.parametrize("knob, value, fields", [
    ("osteophyte_share", 1.0, {"osteophytes"}),
    ("fracture_share", 1.0, {"fracture", "fracture_loss", "cement"}),
    ("slip_share", 1.0, {"slip"}),
    ("thoracic_share", 1.0, {"thoracic"}),
    ("overlap_share", 1.0, {"overlap_discs", "vacuum_discs", "gaps"}),
    ("gas", 0.0, {"gas"}),
    ("dose", 3.0, {"exposure"}),
])
def test_a_knob_changes_its_own_feature_only(knob, value, fields):
    """Each feature draws from its own stream, whether or not it is used: moving one knob
    leaves every other feature of every image as it was (a curator calibrating the overlaps
    keeps the same patients, implants and slips)."""
    from converters.phantom.plan import plan_cases

    base = PhantomConfig(n=40, seed=7, height=320, width=128)
    moved = dataclasses.replace(base, **{knob: value})
    changed = set()
    for a, b in zip(plan_cases(base), plan_cases(moved)):
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changed.add(f.name)
    assert changed and changed <= fields, changed


def test_osteophytes_gas_and_dose_leave_the_annotators_polygons_alone(tmp_path):
    """Bone the annotator leaves out, gas over the spine and a noisier exposure change the
    pixels, never the polygons or the truth's geometry."""
    from converters.phantom.anatomy import render
    from converters.phantom.plan import plan_cases

    base = PhantomConfig(n=8, seed=2, height=320, width=128, osteophyte_share=0.0)
    other = dataclasses.replace(base, osteophyte_share=1.0, gas=2.0, dose=0.3)
    for a, b in zip(plan_cases(base), plan_cases(other)):
        pa, ra, _ = render(a)
        pb, rb, _ = render(b)
        assert (pa != pb).any()
        assert [(r.cls, r.level) for r in ra] == [(r.cls, r.level) for r in rb]
        assert all(np.array_equal(x.points, y.points) for x, y in zip(ra, rb))
        assert [x.endplates() for x in ra if x.corners] == [y.endplates() for y in rb if y.corners]
