"""Results back to the clinic (converters/dicom/seg.py, train/infer/to_seg.py, spinepipe to-seg /
store):
predictions as DICOM SEG on the radiographs, pseudonymized or re-identified, stored to a real
Orthanc and fetched back."""
from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pycocotools import mask as mask_utils

from conftest import Orthanc, ingest_chain, dcmtk
from converters.annotations.coco import rasterize
from converters.dicom.seg import read_seg
from test_anonymize import _leak_scan

SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")
N_IMAGES = 4


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A phantom archive anonymized and exported, and two evaluation folders of "predictions"
    made from the true polygons (overlapping vertebrae included): an instance model's
    (instances.json) and a semantic model's (class-mask PNGs)."""
    from converters.phantom.writing import PhantomConfig, generate
    root = tmp_path_factory.mktemp("seg")
    generate(PhantomConfig(n=N_IMAGES, seed=3, height=400, width=160, burned_in_share=0,
                           overlap_share=1.0, implant_share=0.0, transitional_share=0.0),
             root / "raw", workers=1)   # overlaps in every image: no cage restores a disc
    ingest_chain(root / "raw", root)
    via = json.loads((root / "via.json").read_text())["_via_img_metadata"]
    inst_dir, sem_dir = root / "eval" / "mask_rcnn" / "fold0", root / "eval" / "unet" / "fold0"
    (sem_dir / "predictions").mkdir(parents=True)
    inst_dir.mkdir(parents=True)
    results, names = [], []
    for im in via.values():
        name = im["filename"]
        names.append(name)
        h, w = cv2.imread(str(root / "png" / name), cv2.IMREAD_UNCHANGED).shape
        sem = np.zeros((h, w), np.uint8)
        levels = ["L1", "L2", "L3", "L4", "L5"]
        for r in im["regions"]:
            cls = r["region_attributes"]["class"]
            if cls not in ("lumbar", "sacrum"):
                continue
            s = r["shape_attributes"]
            poly = [v for xy in zip(s["all_points_x"], s["all_points_y"]) for v in xy]
            m = rasterize(poly, h, w).astype(bool)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            level = "S1" if cls == "sacrum" else levels.pop()   # any labels will do here
            results.append({"file_name": name, "category_id": 1 if cls == "lumbar" else 2,
                            "segmentation": rle, "score": 0.9, "level": level})
            sem[m] = np.maximum(sem[m], 1 if cls == "lumbar" else 2)
        cv2.imwrite(str(sem_dir / "predictions" / name), sem)
    (inst_dir / "instances.json").write_text(json.dumps(results))
    for d in (inst_dir, sem_dir):
        with (d / "per_image.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["file_name", "predicted"])
            w.writeheader()
            w.writerows({"file_name": n, "predicted": 1} for n in names)
    return root, results


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPINEPIPE, *args, "--quiet"], capture_output=True, text=True,
                          cwd=root, timeout=300)


def _segs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


#: SNOMED CT concepts of the segments, written out from SNOMED CT itself (not read from
#: pydicom's code dictionary, which the product uses): "Bone structure of L1" ... "of sacrum",
#: and "Lumbar spine structure" for a semantic model's lumbar class
SNOMED = {"L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002",
          "L5": "49668003", "S1": "54735007", "lumbar": "122496007", "sacrum": "54735007"}


def _instance_segs(root: Path) -> list[Path]:
    """The instance model's pseudonymized SEG objects (``seg_inst``), written by to-seg if an
    earlier test has not (checked: exit 0, one object per image)."""
    if len(_segs(root / "seg_inst")) != N_IMAGES:
        proc = _run(root, "to-seg", "--model", "mask_rcnn", "--fold", "0", "--input",
                    "eval/mask_rcnn/fold0", "--dicom", "anon",
                    "--images", "png", "--output", "seg_inst", "--force")
        assert proc.returncode == 0, proc.stderr
    files = _segs(root / "seg_inst")
    assert len(files) == N_IMAGES, files
    return files


@contextmanager
def _closed_port():
    """A loopback port held bound but not listening for the block: a connection to it is
    refused (no other process can take it meanwhile, as it could a port picked and freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_instance_predictions_read_back_pixel_for_pixel(project):
    root, results = project
    proc = _run(root, "to-seg", "--model", "mask_rcnn", "--fold", "0", "--input",
                "eval/mask_rcnn/fold0", "--dicom", "anon",
                "--images", "png", "--output", "seg_inst", "--force")
    assert proc.returncode == 0, proc.stderr
    files = _segs(root / "seg_inst")
    assert len(files) == N_IMAGES and "4 pseudonymized DICOM SEG" in proc.stderr
    by_image = {}
    for r in results:
        by_image.setdefault(r["file_name"], []).append(r)
    record = json.loads((root / "seg_inst" / "to_seg.json").read_text())
    assert len(record["images"]) == N_IMAGES
    for row in record["images"]:
        seg_path = root / "seg_inst" / row["seg"]
        seg = pydicom.dcmread(seg_path)
        source = pydicom.dcmread(next((root / "anon").rglob(
            f"{Path(row['image']).stem.split('_', 1)[1]}.dcm")))
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.PatientID == source.PatientID
        ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        segments = read_seg(seg_path)
        expected = {r["level"]: mask_utils.decode(r["segmentation"]).astype(bool)
                    for r in by_image[row["image"]]}
        assert expected and sorted(lbl for lbl, _, _ in segments) == sorted(expected)
        for label, code, mask in segments:
            assert np.array_equal(mask, expected[label]), (row["image"], label)
            assert code == SNOMED[label], (label, code)
        # overlapping vertebrae stay overlapping segments
        total = sum(m.astype(int) for _, _, m in segments)
        assert total.max() >= 2
        alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == "spinepipe mask_rcnn"
        assert "checkpoint_sha256" in str(alg.AlgorithmParameters)


def test_dciodvfy_finds_no_error(project):
    root, _ = project
    for f in _instance_segs(root)[:2]:
        out = subprocess.run([dcmtk("dciodvfy"), str(f)], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        assert "Segmentation" in text
        assert [line for line in text.splitlines() if line.startswith("Error")] == [], text


def test_semantic_predictions_give_one_segment_per_class_on_the_source_grid(project, tmp_path):
    """A semantic model's class masks; one of them at half the radiograph's size, as a model
    that saw a smaller image would give: mapped onto the DICOM's own grid."""
    root, _ = project
    ev = tmp_path / "eval"
    shutil.copytree(root / "eval" / "unet" / "fold0", ev)
    first = sorted((ev / "predictions").glob("*.png"))[0]
    full = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    half = cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2),
                      interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(first), half)
    proc = _run(root, "to-seg", "--model", "unet", "--fold", "0", "--input", str(ev),
                "--dicom", "anon", "--images", "png", "--output", str(tmp_path / "seg"), "--force")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "seg" / "to_seg.json").read_text())
    assert len(record["images"]) == N_IMAGES
    for row in record["images"]:
        read = read_seg(tmp_path / "seg" / row["seg"])
        segments = {lbl: m for lbl, _, m in read}
        assert set(segments) == {"lumbar", "sacrum"}
        assert {lbl: code for lbl, code, _ in read} == {k: SNOMED[k] for k in segments}
        pred = cv2.imread(str(ev / "predictions" / row["image"]), cv2.IMREAD_UNCHANGED)
        if row["image"] == first.name:
            pred = cv2.resize(pred, (full.shape[1], full.shape[0]),
                              interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(segments["lumbar"], pred == 1)
        assert np.array_equal(segments["sacrum"], pred == 2)


def test_pseudonymized_seg_carries_no_original_identifier(project):
    root, _ = project
    _instance_segs(root)
    inputs = sorted((root / "raw" / "dicom").rglob("*.dcm"))
    assert len(inputs) == N_IMAGES
    assert _leak_scan(inputs, root / "seg_inst") == []


def test_reidentified_seg_only_under_the_private_folder(project):
    root, _ = project
    for out in ("data/seg_reid", "seg_reid", "private/../seg_reid"):
        proc = _run(root, "to-seg", "--model", "mask_rcnn", "--input", "eval/mask_rcnn/fold0",
                    "--dicom", "anon",
                    "--images", "png", "--output", out, "--reidentify", "--private", "private")
        assert proc.returncode == 1 and "only under the private folder" in proc.stderr, out
        assert proc.stderr.count("\n") == 1
        assert not (root / out).exists()
    proc = _run(root, "to-seg", "--model", "mask_rcnn", "--input", "eval/mask_rcnn/fold0",
                "--dicom", "anon", "--images", "png", "--output", "seg_reid", "--reidentify")
    assert proc.returncode == 1 and "--private" in proc.stderr


def _originals(root: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in
            (pydicom.dcmread(f) for f in (root / "raw" / "dicom").rglob("*.dcm"))}


def test_reidentified_seg_stored_to_a_real_pacs_and_fetched_back(project, tmp_path):
    """Stored to Orthanc, found by C-FIND under the original patient and study, and
    fetched back by C-GET byte-for-byte the same object."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (SegmentationStorage,
                                      StudyRootQueryRetrieveInformationModelFind,
                                      StudyRootQueryRetrieveInformationModelGet)
    root, _ = project
    proc = _run(root, "to-seg", "--model", "mask_rcnn", "--input", "eval/mask_rcnn/fold0",
                "--dicom", "anon",
                "--images", "png", "--output", "private/seg", "--reidentify", "--private",
                "private")
    assert proc.returncode == 0, proc.stderr
    assert "re-identified" in proc.stderr
    originals = _originals(root)
    files = _segs(root / "private" / "seg")
    assert len(files) == N_IMAGES
    for f in files:
        seg = pydicom.dcmread(f)
        ref = seg.ReferencedSeriesSequence[0]
        src = originals[ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID]
        assert (seg.PatientID, seg.PatientName, seg.StudyInstanceUID, seg.AccessionNumber) == \
            (src.PatientID, src.PatientName, src.StudyInstanceUID, src.AccessionNumber)
        assert ref.SeriesInstanceUID == src.SeriesInstanceUID
        assert "PatientIdentityRemoved" not in seg

    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        params = tmp_path / "params.yaml"
        params.write_text(f"retrieve:\n  port: {pacs.dicom_port}\n  timeout_s: 10\n")
        proc = _run(root, "store", "--input", "private/seg", "--params", str(params))
        assert proc.returncode == 0, proc.stderr
        assert f"store: {N_IMAGES} stored, 0 already there, 0 failed" in proc.stderr
        again = _run(root, "store", "--input", "private/seg", "--params", str(params))
        assert again.returncode == 0, again.stderr
        assert f"store: 0 stored, {N_IMAGES} already there" in again.stderr   # resumable

        target = pydicom.dcmread(files[0])
        ae = AE(ae_title="SPINEPIPE")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(SegmentationStorage)
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.PatientID = target.PatientID
        query.StudyInstanceUID = target.StudyInstanceUID
        query.SeriesInstanceUID = target.SeriesInstanceUID
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title="ORTHANC")
        assert assoc.is_established
        found = [ident for status, ident in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind) if ident is not None]
        assoc.release()
        assert [str(i.SOPInstanceUID) for i in found] == [str(target.SOPInstanceUID)]
        assert str(found[0].SOPClassUID) == str(SegmentationStorage)

        received = []

        def on_store(event):
            received.append(event.encoded_dataset())
            return 0x0000

        assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title="ORTHANC",
                             ext_neg=[build_role(SegmentationStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        get = pydicom.Dataset()
        get.QueryRetrieveLevel = "IMAGE"
        get.StudyInstanceUID = target.StudyInstanceUID
        get.SeriesInstanceUID = target.SeriesInstanceUID
        get.SOPInstanceUID = target.SOPInstanceUID
        statuses = [s.Status for s, _ in assoc.send_c_get(
            get, StudyRootQueryRetrieveInformationModelGet) if s]
        assoc.release()
        assert statuses and statuses[-1] == 0x0000 and len(received) == 1
        back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(received[0]), force=True)
        assert back.SOPInstanceUID == target.SOPInstanceUID
        assert back.PixelData == target.PixelData
        assert [s.SegmentLabel for s in back.SegmentSequence] == \
            [s.SegmentLabel for s in target.SegmentSequence]
    finally:
        pacs.kill()


def test_store_reports_a_pacs_that_is_not_there(project, tmp_path):
    root, _ = project
    _instance_segs(root)
    params = tmp_path / "params.yaml"
    with _closed_port() as port:
        params.write_text(f"retrieve:\n  port: {port}\n  timeout_s: 2\n")
        proc = _run(root, "store", "--input", "seg_inst", "--params", str(params))
    assert proc.returncode == 1 and "no answer from" in proc.stderr
    assert "Traceback" not in proc.stderr
