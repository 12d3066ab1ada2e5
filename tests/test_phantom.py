"""The synthetic phantom: DICOM realism, VIA structure, determinism, anatomy."""
from __future__ import annotations

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
    out = tmp_path / "p"
    generate(PhantomConfig(n=12, seed=5, height=256, width=128, monochrome1_share=0.5,
                           burned_in_share=0.5, dx_share=0.5), out, workers=1)
    seen = Counter()
    for f in _files(out):
        ds = pydicom.dcmread(f)
        seen[ds.PhotometricInterpretation] += 1
        seen[ds.Modality] += 1
        seen["burned" if ds.BurnedInAnnotation == "YES" else "clean"] += 1
        if ds.BurnedInAnnotation == "YES":
            # the name is in the pixels: saturated text in the top-left corner
            white = 0 if ds.PhotometricInterpretation == "MONOCHROME1" else 4095
            assert (ds.pixel_array[:40, :] == white).sum() > 20
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
    generate(PhantomConfig(n=4, seed=4, height=320, width=128, implant_share=1.0,
                           repeat_patient_share=0.0, monochrome1_share=0.0), out, workers=1)
    truth = json.loads((out / "truth.json").read_text())
    via = _via(out)["_via_img_metadata"]
    for uid, t in truth.items():
        meta = via[f"{uid}.png-1"]
        classes = Counter(r["region_attributes"]["class"] for r in meta["regions"])
        assert t["implants"] and classes["screw"] >= 2 and classes["rod"] == 1
        px = pydicom.dcmread(out / t["dicom"]).pixel_array.astype(float)
        for r in meta["regions"]:
            if r["region_attributes"]["class"] == "rod":
                s = r["shape_attributes"]
                inside = rasterize(flat(s["all_points_x"], s["all_points_y"]), *px.shape)
                assert px[inside].mean() > np.percentile(px, 95)


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
])
def test_bad_configuration_is_refused(tmp_path, kwargs):
    with pytest.raises(InvalidConfigError):
        generate(PhantomConfig(**kwargs), tmp_path, workers=1)
