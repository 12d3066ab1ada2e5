"""Export: the pixel pipeline in order, full-bit-depth equalization, compressed syntaxes,
provenance, the VIA stub, incremental re-runs, bad inputs, and the demo chain's privacy."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from converters.dicom.deid_table import AnonymizeConfig

from converters.dicom.anonymize import anonymize_tree
from converters.dicom.export import ExportConfig, export_tree
from converters.dicom.ledger import load_or_create_salt, prepare_private
from converters.dicom.pixels import DisplayConfig, to_display

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


def _pydicom_file(name: str) -> Path:
    import pydicom.data
    return Path(pydicom.data.__file__).parent / "test_files" / name


def _ds(pixels: np.ndarray, photometric="MONOCHROME2", bits=12, **extra) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "2.25.1"
    ds.PatientID = "SPTEST"
    ds.Modality = "CR"
    ds.PatientIdentityRemoved = "YES"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def test_equalization_uses_the_full_bit_depth():
    # 12-bit values that differ only below the top 8 bits: truncating to 8 bits first would
    # merge them into 5 grey levels; equalizing on the 4096-level histogram keeps 64.
    values = (np.arange(64, dtype=np.uint16) + 1000).repeat(16).reshape(32, 32)
    img, transforms = to_display(_ds(values))
    assert len(np.unique(img)) == 64
    assert img.min() == 0 and img.max() == 255
    assert (np.diff(img.ravel()[::16].astype(int)) > 0).all()  # monotonic in the input
    truncated = cv2.equalizeHist((values >> 4).astype(np.uint8))
    assert len(np.unique(truncated)) == 5
    assert transforms[0] == "decode" and transforms[-1] == "quantize_8bit"


def test_pipeline_order_modality_lut_then_monochrome1_inversion():
    raw = np.array([[0, 100], [200, 300]], np.uint16)
    img, transforms = to_display(_ds(raw, "MONOCHROME1", RescaleSlope="2",
                                     RescaleIntercept="-100"))
    assert transforms[:3] == ["decode", "modality_lut(slope=2, intercept=-100)",
                              "invert_monochrome1"]
    assert img[0, 0] == 255 and img[1, 1] == 0  # lowest stored value is the brightest


def test_voi_window_and_clahe_and_16_bit():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (64, 64)).astype(np.uint16)
    img, t = to_display(_ds(raw, WindowCenter="2048", WindowWidth="1024"),
                        DisplayConfig(use_voi_window=True, bits=16))
    assert img.dtype == np.uint16 and "voi_window(center=2048, width=1024)" in t
    img, t = to_display(_ds(raw), DisplayConfig(equalization="clahe"))
    assert img.dtype == np.uint8 and any(s.startswith("clahe") for s in t)


@pytest.mark.parametrize("compressed, reference", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),                 # RLE lossless
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),    # JPEG-LS lossless
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),        # JPEG 2000 lossless
    ("JPEG2000.dcm", None),                                # JPEG 2000
    ("JPGExtended.dcm", None),                             # JPEG extended 12-bit (lossy)
])
def test_compressed_transfer_syntaxes_decode(compressed, reference):
    ds = pydicom.dcmread(_pydicom_file(compressed))
    img, transforms = to_display(ds)
    assert img.shape == (ds.Rows, ds.Columns) and img.max() > img.min()
    if reference:
        ref, _ = to_display(pydicom.dcmread(_pydicom_file(reference)))
        assert np.array_equal(img, ref)


@pytest.mark.parametrize("flag, lossless, bits", [
    ("+el", True, 12),   # JPEG lossless, process 14, on the phantom's 12-bit pixels
    ("+eb", False, 8),   # JPEG baseline, 8-bit
])
def test_jpeg_made_by_dcmtk_decodes(small_phantom, tmp_path, flag, lossless, bits):
    assert shutil.which("dcmcjpeg"), "dcmtk missing: .ci/run installs it"
    src = sorted((small_phantom / "dicom").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    if bits == 8:
        ds.PixelData = (ds.pixel_array >> 4).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 8, 7
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    jpeg = tmp_path / "jpeg.dcm"
    proc = subprocess.run(["dcmcjpeg", flag, str(plain), str(jpeg)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    compressed = pydicom.dcmread(jpeg)
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    img, _ = to_display(compressed)
    ref, _ = to_display(pydicom.dcmread(plain))
    if lossless:
        assert np.array_equal(img, ref)
    else:
        assert np.abs(img.astype(int) - ref).mean() < 8


@pytest.fixture(scope="module")
def anonymized(small_phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("anon")
    priv = prepare_private(root / "private")
    anonymize_tree(small_phantom / "dicom", root / "anon", priv, load_or_create_salt(priv),
                   AnonymizeConfig())
    return root


def test_export_tree_writes_png_provenance_and_via_stub(anonymized, tmp_path):
    out = tmp_path / "png"
    report = export_tree(anonymized / "anon", out, ExportConfig(), workers=2)
    assert report.exported and not report.failed
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(report.exported)
    via = json.loads((out / "via_project.json").read_text())
    listed = {m["filename"]: m["size"] for m in via["_via_img_metadata"].values()}
    assert listed == {p.name: p.stat().st_size for p in pngs}
    for p in pngs:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.ndim == 2
        prov = json.loads((out / "provenance" / f"{p.stem}.json").read_text())
        assert p.name == f"{prov['patient']}_{prov['sop_instance_uid']}.png"
        assert prov["patient"].startswith("SP") and prov["sop_instance_uid"].startswith("2.25.")
        assert prov["pixel_spacing_mm"] and prov["bits_stored"] == 12
        assert prov["transforms"][0] == "decode" and "histogram_equalization" in prov["transforms"][-3]
        if prov["photometric_interpretation"] == "MONOCHROME1":
            assert "invert_monochrome1" in prov["transforms"]
        # bone bright: the vertebral column is brighter than the image's left and right edges
        h, w = img.shape
        assert img[h // 4: 3 * h // 4, w // 3: 3 * w // 4].mean() > img[:, :w // 10].mean()


def test_export_is_incremental(anonymized, tmp_path):
    src = tmp_path / "anon"
    shutil.copytree(anonymized / "anon", src)
    out = tmp_path / "png"
    first = export_tree(src, out, ExportConfig())
    assert first.reused == 0
    second = export_tree(src, out, ExportConfig())
    assert second.reused == len(first.exported)
    victim = sorted(src.rglob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes())
    third = export_tree(src, out, ExportConfig())
    assert third.reused == len(first.exported) - 1
    victim.unlink()
    fourth = export_tree(src, out, ExportConfig())
    assert len(list(out.glob("*.png"))) == len(first.exported) - 1 == len(fourth.exported)


def test_bad_inputs_are_reported_and_the_rest_proceeds(anonymized, tmp_path):
    src = tmp_path / "anon"
    shutil.copytree(anonymized / "anon", src)
    shutil.copy(_pydicom_file("MR_small.dcm"), src / "not_anonymized.dcm")
    mr = _ds(np.zeros((4, 4), np.uint16), Modality="MR")
    mr.save_as(src / "mr.dcm", enforce_file_format=True)
    nopix = _ds(np.zeros((4, 4), np.uint16))
    del nopix.PixelData
    nopix.save_as(src / "nopix.dcm", enforce_file_format=True)
    (src / "corrupt.dcm").write_bytes(b"\0" * 50)
    report = export_tree(src, tmp_path / "png", ExportConfig())
    assert set(report.failed) == {"not_anonymized.dcm", "mr.dcm", "nopix.dcm", "corrupt.dcm"}
    assert "PatientIdentityRemoved" in report.failed["not_anonymized.dcm"]
    assert "modality MR" in report.failed["mr.dcm"]
    assert "no PixelData" in report.failed["nopix.dcm"]
    assert len(report.exported) == len(list((anonymized / "anon").rglob("*.dcm")))
    proc = subprocess.run([SPINEPIPE, "export", "-i", str(src), "-o", str(tmp_path / "png2"),
                           "--quiet", "--params", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("Error: 4 file(s)")


def test_the_demo_readers_do_not_depend_on_the_salt(small_phantom, tmp_path):
    """Two sites' salts give the phantom's images other pseudonyms, but the demo's annotator
    holds out the same images, gives each image the same readers, and they draw the same
    polygons: the training data, and so the demo's numbers, do not depend on the salt."""
    from converters.dicom.ledger import load_ledger
    from converters.phantom.annotator import exported_pngs
    params = tmp_path / "params.yaml"
    params.write_text("annotator: {readers: 3, double_read_share: 0.3}\n")

    def site(name: str) -> dict:
        root, priv = tmp_path / name, tmp_path / name / "private"
        anonymize_tree(small_phantom / "dicom", root / "anon", prepare_private(priv),
                       load_or_create_salt(priv), AnonymizeConfig())
        export_tree(root / "anon", root / "png", ExportConfig())
        proc = subprocess.run([SPINEPIPE, "phantom-annotations", "--via",
                               str(small_phantom / "annotations" / "via_project.json"),
                               "--png", str(root / "png"), "--private", str(priv), "--output",
                               str(root / "annotations"), "--holdout", "2", "--holdout-output",
                               str(root / "holdout.json"), "--readers-truth",
                               str(root / "readers.json"), "--quiet", "--params", str(params)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        back = {png: uid for uid, (png, _) in
                exported_pngs(root / "png", load_ledger(priv)["instances"]).items()}
        held = json.loads((root / "holdout.json").read_text())["_via_img_metadata"].values()
        readers = json.loads((root / "readers.json").read_text())["images"]
        drawn = {}
        for reader in ("reader1", "reader2", "reader3"):
            project = json.loads((root / "annotations" / reader / "phantom_via.json").read_text())
            for meta in project["_via_img_metadata"].values():
                drawn[(reader, back[meta["filename"]])] = [
                    (r["shape_attributes"]["all_points_x"], r["shape_attributes"]["all_points_y"])
                    for r in meta["regions"]]
        return {"pngs": set(back), "held": {back[m["filename"]] for m in held},
                "readers": {back[png]: who for png, who in readers.items()}, "drawn": drawn}

    a, b = site("a"), site("b")
    assert not a["pngs"] & b["pngs"]                   # the salts did rename every image
    assert len(a["held"]) == 2 and a["held"] == b["held"]
    assert len(set(map(tuple, a["readers"].values()))) > 1   # not everyone reads everything
    assert a["readers"] == b["readers"] and a["drawn"] == b["drawn"]


def test_demo_chain_keeps_identifiers_out_of_data(small_phantom, tmp_path):
    """phantom -> anonymize -> export -> phantom-annotations, through the CLI as dvc runs it."""
    data = tmp_path / "data"
    priv = tmp_path / "private"
    none = ["--quiet", "--params", str(tmp_path / "none.yaml")]
    steps = [
        ["anonymize", "-i", str(small_phantom / "dicom"), "-o", str(data / "anon"), "--private", str(priv)],
        ["export", "-i", str(data / "anon"), "-o", str(data / "png")],
    ]
    for step in steps:
        proc = subprocess.run([SPINEPIPE, *step, *none], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([SPINEPIPE, "phantom-annotations", "--via",
                           str(small_phantom / "annotations" / "via_project.json"), "--png",
                           str(data / "png"), "--private", str(priv), "--output",
                           str(data / "annotations"), "--holdout", "2",
                           "--holdout-output", str(data / "holdout_via.json"), *none],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    via = json.loads((data / "annotations" / "reader1" / "phantom_via.json").read_text())
    held = json.loads((data / "holdout_via.json").read_text())["_via_img_metadata"]
    pngs = {p.name: p.stat().st_size for p in (data / "png").glob("*.png")}
    for meta in [*via["_via_img_metadata"].values(), *held.values()]:
        assert pngs[meta["filename"]] == meta["size"]
        assert len(meta["regions"]) >= 6
    # the annotator left two images for the proposals; their truth is kept apart
    assert len(held) == 2 and not set(held) & set(via["_via_img_metadata"])
    assert len(via["_via_img_metadata"]) + len(held) == len(pngs)
    proc = subprocess.run([SPINEPIPE, "phantom-annotations", "--via",
                           str(small_phantom / "annotations" / "via_project.json"), "--png",
                           str(data / "png"), "--private", str(priv), "--output",
                           str(tmp_path / "x"), "--holdout", "2", *none],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "need --holdout-output" in proc.stderr
    # no original identifier anywhere under data/
    needles = set()
    for f in (small_phantom / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        needles |= {str(ds.PatientID), str(ds.AccessionNumber), str(ds.SOPInstanceUID),
                    str(ds.StudyInstanceUID), str(ds.PatientName).split("^")[0],
                    str(ds.PatientBirthDate), str(ds.StudyDate), str(ds.InstitutionName)}
    for p in data.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert not [n for n in needles if n.encode() in blob], p
