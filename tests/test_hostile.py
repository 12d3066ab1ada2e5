"""Hostile and broken input across the ingest chain (issue: nothing leaks, nothing escapes,
nothing is lost): path traversal from UIDs and Patient IDs (anonymize, export, a real Orthanc
for retrieve), identifiers in sequence items / the preamble / registry-root UIDs, truncated
pixel data, additive batches, retried failures, one-line errors for every bad input, and
stale temporary files removed by re-runs.

Every command runs in-process through ``pipeline.cli.main`` (exit status and stderr as a
user sees them); an exception escaping ``main`` is a traceback, hence a failed test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import Orthanc, dicom_image
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.anonymize import anonymize_tree
from converters.dicom.export import ExportConfig, export_tree
from converters.core.files import TEMP_MARK
from converters.dicom.ledger import load_or_create_salt, prepare_private
from converters.dicom.retrieve import retrieve
from converters.core.paths import UnsafePathError, confined, is_uid
from pipeline.cli import main

NO_PARAMS = "/nonexistent/params.yaml"  # defaults: only the arguments count


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``spinepipe ARGS`` in-process; (exit status, stderr)."""
    code = main(list(args))
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert exit 1 with exactly one ``Error:`` line (and no traceback); return that line."""
    lines = [l for l in err.splitlines() if l.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def image(**extra) -> Dataset:
    """A small valid CR object with identifying values (12-bit, 8x8)."""
    return dicom_image(8, **extra)


def save(ds: Dataset, path: Path, preamble: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble is not None:
        ds.preamble = preamble
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# the helper


@pytest.mark.parametrize("value, ok", [
    ("1.2.840.10008.5.1.4.1.1.1", True),
    ("2.25.1234567890", True),
    ("1.2.840.10008.9/../../../../../ESCAPED", False),   # traversal
    ("1..2", False), (".1.2", False), ("1.2.", False),    # empty components
    ("1.2.3a", False), ("", False),                       # letters, empty
    ("1." + "2" * 63, False),                             # 65 characters
])
def test_uid_grammar(value, ok):
    assert is_uid(value) is ok


def test_confined_refuses_every_way_out(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert confined(root, "a", "b.png") == root / "a" / "b.png"
    for parts in (("..", "x"), ("/etc/passwd",), ("a/../../x",)):
        with pytest.raises(UnsafePathError, match="outside the output folder"):
            confined(root, *parts)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        confined(root, "link", "x")


# --------------------------------------------------------------------------------------------
# 1. writes outside the output folder


def test_anonymize_remaps_registry_root_uids_and_writes_inside(tmp_path, capsys):
    evil_sop = "1.2.840.10008.9/../../../../../ESCAPED"
    evil_study = "1.2.840.10008.7/../../../STUDY"
    src = tmp_path / "in"
    save(image(SOPInstanceUID=evil_sop, StudyInstanceUID=evil_study), src / "evil.dcm")
    out = tmp_path / "w1" / "w2" / "w3" / "w4" / "w5" / "out"
    before = files_under(tmp_path)
    code, err = cli(capsys, "anonymize", "--input", str(src), "--output", str(out), "--private",
                    str(tmp_path / "private"), "--params", NO_PARAMS, "--quiet", "--workers", "1")
    assert code == 0, err
    new = files_under(tmp_path) - before
    assert all(out in p.parents or (tmp_path / "private") in p.parents for p in new), new
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 1 and written[0].stem.startswith("2.25.")
    ds = pydicom.dcmread(written[0])
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.StudyInstanceUID.startswith("2.25.")
    for f in files_under(out):  # file names, audit records and the public report
        assert b"ESCAPED" not in f.read_bytes() and "ESCAPED" not in f.name
        assert b"1.2.840.10008.9" not in f.read_bytes()


def test_export_refuses_a_patient_id_or_uid_that_is_a_path(tmp_path, capsys):
    src = tmp_path / "anon"
    save(image(PatientID="../../../ESCAPED", PatientIdentityRemoved="YES"), src / "a.dcm")
    save(image(SOPInstanceUID="1.2/../../../X", PatientID="SP0123456789",
               PatientIdentityRemoved="YES"), src / "b.dcm")
    out = tmp_path / "w1" / "w2" / "w3" / "png"
    before = files_under(tmp_path)
    code, err = cli(capsys, "export", "--input", str(src), "--output", str(out), "--params",
                    NO_PARAMS, "--quiet", "--workers", "1")
    one_line_error(code, err, "2 file(s) failed to export")
    assert "Patient ID '../../../ESCAPED' is not a safe file name" in err and "(0010,0020)" in err
    assert "SOP Instance UID '1.2/../../../X' is not a valid DICOM UID" in err
    new = files_under(tmp_path) - before
    assert all(out in p.parents for p in new) and not list(out.glob("*.png")), new


def test_a_crafted_uid_through_anonymize_and_export_stays_inside(tmp_path):
    src = tmp_path / "in"
    save(image(SOPInstanceUID="1.2.840.10008.9/../../../../PNG_ESCAPE"), src / "x.dcm")
    priv = prepare_private(tmp_path / "private")
    anonymize_tree(src, tmp_path / "d" / "anon", priv, load_or_create_salt(priv),
                   AnonymizeConfig())
    report = export_tree(tmp_path / "d" / "anon", tmp_path / "d" / "png", ExportConfig())
    assert len(report.exported) == 1 and not report.failed
    assert not [p for p in tmp_path.rglob("*ESCAPE*")]
    assert all(p.parent == tmp_path / "d" / "png" for p in tmp_path.rglob("*.png"))


def test_retrieve_refuses_a_traversal_uid_from_a_real_pacs(tmp_path, capsys):
    evil = image(SOPInstanceUID="9.9.9/../../../../PWNED_BY_PACS", StudyInstanceUID="1.2.3.77",
                 SeriesInstanceUID="1.2.3.77.1", AccessionNumber="ACC777")
    evil.file_meta.MediaStorageSOPInstanceUID = "9.9.9/../../../../PWNED_BY_PACS"
    good = image(SOPInstanceUID="1.2.3.77.1.1", StudyInstanceUID="1.2.3.77",
                 SeriesInstanceUID="1.2.3.77.1", AccessionNumber="ACC777")
    seed = tmp_path / "seed"
    save(evil, seed / "evil.dcm")
    save(good, seed / "good.dcm")
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.store(seed)
        out = tmp_path / "a" / "b" / "c" / "d" / "pacs"
        report = retrieve(server.config(retries=0), out, tmp_path / "state.json",
                          [("AccessionNumber", "ACC777")])
    finally:
        server.kill()
    assert not list(tmp_path.rglob("*PWNED*"))
    assert [p.name for p in out.rglob("*.dcm")] == ["1.2.3.77.1.1.dcm"]
    study = report.studies["1.2.3.77"]
    assert study["status"] == "incomplete" and study["invalid_uids"] == 1
    assert "invalid UID" in study["error"] and report.failed == ["1.2.3.77"]


def test_store_handler_refuses_objects_with_invalid_uids(tmp_path):
    """What a PACS pushes during C-GET / C-MOVE is checked too, not only C-FIND answers."""
    from converters.core.files import prepare_output
    from converters.dicom.retrieve import Asked, Receiver
    from converters.dicom.pacs import RetrieveConfig, deadline_for

    class Event:  # the two members of pynetdicom's C-STORE event that the handler reads
        def __init__(self, ds):
            self.dataset = ds

        def encoded_dataset(self, include_meta=True):
            from io import BytesIO
            buf = BytesIO()
            self.dataset.save_as(buf, enforce_file_format=True)
            return buf.getvalue()

    receiver = Receiver(prepare_output(tmp_path / "out"))
    with receiver.expecting(Asked("1.2.3.999.2", "1.2.3.999.3", frozenset({"1.2.3.999.1"}),
                                 "MRN998877", deadline_for(RetrieveConfig()))):
        assert receiver.handle(Event(image(SeriesInstanceUID="../../x"))) == 0xC000
        assert receiver.handle(Event(image())) == 0x0000
    assert receiver.fetched == 1 and len(receiver.invalid) == 1
    assert [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.dcm")] \
        == ["1.2.3.999.2/1.2.3.999.3/1.2.3.999.1.dcm"]


# --------------------------------------------------------------------------------------------
# 2. identifiers that survive anonymization


def test_identifiers_in_sequences_preamble_and_registry_uids_are_gone(tmp_path):
    item = Dataset()
    item.PatientName = "DOE^JOHN"
    item.PatientID = "MRN998877"
    item.ReferencedSOPInstanceUID = "1.2.840.10008.55.66"
    inner = Dataset()
    inner.PatientName = "DOE^JOHN"
    inner.OtherPatientIDs = "MRN998877"
    item.ReferencedSeriesSequence = Sequence([inner])
    ds = image(ReferencedImageSequence=Sequence([item]),
               SOPInstanceUID="1.2.840.10008.999.1")
    src = tmp_path / "in"
    save(ds, src / "a.dcm", preamble=b"DOE^JOHN MRN998877".ljust(128, b" "))
    priv = prepare_private(tmp_path / "private")
    anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv), AnonymizeConfig())
    (written,) = list((tmp_path / "out").rglob("*.dcm"))
    blob = written.read_bytes()
    assert blob[:128] == b"\0" * 128
    for needle in (b"DOE", b"JOHN", b"MRN998877", b"1.2.840.10008.999.1", b"1.2.840.10008.55.66"):
        for f in files_under(tmp_path / "out"):
            assert needle not in f.read_bytes(), (needle, f.name)
    out = pydicom.dcmread(written)
    ref = out.ReferencedImageSequence[0]
    assert ref.PatientName == out.PatientID == ref.PatientID  # the pseudonym, at every depth
    assert ref.ReferencedSOPInstanceUID.startswith("2.25.")
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"  # a well-known UID stays


# --------------------------------------------------------------------------------------------
# 3. broken input is not success


def test_truncated_and_implausible_pixel_data_fail(tmp_path):
    src = tmp_path / "in"
    whole = save(image(), src / "whole.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(whole[:-40])           # cut inside the pixel data
    (src / "header400.dcm").write_bytes(whole[:400])           # a 400-byte header
    huge = image(Rows=60000, Columns=60000, SOPInstanceUID="1.2.3.5")
    huge.PixelData = b"\0" * 64
    save(huge, src / "huge.dcm")
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    rows = report.private_rows
    assert rows["whole.dcm"]["status"] == "anonymized"
    for name in ("truncated.dcm", "header400.dcm", "huge.dcm"):
        assert rows[name]["status"] == "failed", (name, rows[name])
    assert "truncated" in rows["truncated.dcm"]["reason"]
    assert "truncated" in rows["huge.dcm"]["reason"]
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1


def test_a_value_pydicom_cannot_parse_fails_the_file_and_names_it(tmp_path):
    # a VR of two bytes no standard defines, written into an explicit-VR file: pydicom raises
    # NotImplementedError from its own code while anonymize reads the element
    src = tmp_path / "in"
    good = save(image(StudyDate="20240101"), src / "good.dcm").read_bytes()
    at = good.index(b"\x08\x00\x20\x00DA")                    # (0008,0020) Study Date, DA
    (src / "bad_vr.dcm").write_bytes(good[:at + 4] + b"\x44\x03" + good[at + 6:])
    priv = prepare_private(tmp_path / "private")
    rows = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                          AnonymizeConfig(ocr=False)).private_rows
    assert rows["bad_vr.dcm"]["status"] == "failed"
    assert rows["bad_vr.dcm"]["reason"].startswith("bad_vr.dcm: NotImplementedError: ")
    assert rows["good.dcm"]["status"] == "anonymized"


def test_a_bug_in_spinepipe_is_not_reported_as_a_bad_file(tmp_path, monkeypatch):
    """The per-file jobs catch what a parser raises on hostile bytes; the same exception
    raised by spinepipe's own code is a bug: it escapes with its traceback (convention 4)
    instead of becoming a "failed" row that blames the file."""
    from converters.core.errors import raised_by_a_parser
    from converters.dicom import deid_engine, export

    src = tmp_path / "in"
    save(image(), src / "a.dcm")
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    # the engine's own line `identity.key` raises AttributeError on this (buggy) identity
    monkeypatch.setattr(deid_engine, "patient_identity", lambda ds, file="": None)
    with pytest.raises(AttributeError) as bug:
        anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig(ocr=False))
    assert not raised_by_a_parser(bug.value)
    monkeypatch.undo()
    anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig(ocr=False))
    # export: its own record writer handed a bad name raises TypeError in spinepipe's code
    monkeypatch.setattr(export, "record_path", lambda out_dir, name: None)
    with pytest.raises(TypeError) as bug:
        export_tree(tmp_path / "out", tmp_path / "png", ExportConfig())
    assert not raised_by_a_parser(bug.value)
    with pytest.raises(json.JSONDecodeError) as stdlib:     # not a parser of DICOM bytes
        json.loads("{")
    assert not raised_by_a_parser(stdlib.value)


# --------------------------------------------------------------------------------------------
# 4. nothing lost in incremental runs


def _batch(folder: Path, n: int, base: int) -> None:
    for i in range(n):
        save(image(SOPInstanceUID=f"1.2.3.{base}.{i}", PatientID=f"P{base}{i % 3}"),
             folder / f"f{i}.dcm")


def test_a_second_batch_keeps_the_first(tmp_path):
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    _batch(tmp_path / "batch1", 8, 1)
    _batch(tmp_path / "batch2", 5, 2)
    out = tmp_path / "out"
    anonymize_tree(tmp_path / "batch1", out, priv, salt, AnonymizeConfig())
    first = sorted(out.rglob("*.dcm"))
    anonymize_tree(tmp_path / "batch2", out, priv, salt, AnonymizeConfig())
    assert len(list(out.rglob("*.dcm"))) == 13 and set(first) <= set(out.rglob("*.dcm"))
    audits = {p.stem for p in (out / "audit").glob("*.json")}
    assert audits == {p.stem for p in out.rglob("*.dcm")}  # no orphaned audit record
    public = json.loads((out / "report.json").read_text())
    assert len(public["outputs"]) == 13
    # a file removed from batch 1: only its own output and audit record go
    (tmp_path / "batch1" / "f0.dcm").unlink()
    anonymize_tree(tmp_path / "batch1", out, priv, salt, AnonymizeConfig())
    assert len(list(out.rglob("*.dcm"))) == 12
    assert {p.stem for p in (out / "audit").glob("*.json")} == {p.stem for p in out.rglob("*.dcm")}
    # export into one folder from two input folders: additive as well
    png = tmp_path / "png"
    export_tree(out, png, ExportConfig())
    other = tmp_path / "other"
    anonymize_tree(tmp_path / "batch2", other, priv, salt, AnonymizeConfig())
    shutil.rmtree(other / next(other.glob("SP*")).name)  # keep one patient only
    export_tree(other, png, ExportConfig())
    assert len(list(png.glob("*.png"))) == 12
    via = json.loads((png / "via_project.json").read_text())
    assert len(via["_via_img_metadata"]) == 12


def test_a_fixed_failure_is_retried_and_named(tmp_path, capsys):
    src = tmp_path / "in"
    save(image(), src / "a.dcm")
    save(image(SOPInstanceUID="1.2.3.4.5", PatientID="OTHER"), src / "b.dcm")
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    out = tmp_path / "out"
    out.mkdir()
    from converters.dicom.anonymize import patient_pseudonym
    blocker = out / patient_pseudonym(salt, "MRN998877")
    blocker.write_text("a file where the patient's folder goes")  # the write of a.dcm fails
    args = ["anonymize", "--input", str(src), "--output", str(out), "--private", str(priv),
            "--params", NO_PARAMS, "--quiet", "--workers", "1"]
    for _ in range(2):  # the failure is not cached: retried, and named, every time
        code, err = cli(capsys, *args)
        one_line_error(code, err, "1 file(s) failed to anonymize: a.dcm")
    blocker.unlink()  # fixed, without touching the input
    code, err = cli(capsys, *args)
    assert code == 0, err
    assert len(list(out.rglob("*.dcm"))) == 2


# --------------------------------------------------------------------------------------------
# 5. one-line errors instead of tracebacks


def _via(tmp_path: Path, regions: object = None, **entry) -> tuple[Path, Path]:
    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    cv2.imwrite(str(images / "a.png"), np.full((100, 60), 90, np.uint8))
    meta = {"filename": "a.png", "size": -1, "file_attributes": {},
            "regions": regions if regions is not None else [
                {"shape_attributes": {"name": "polygon", "all_points_x": [10, 30, 30],
                                      "all_points_y": [5, 5, 20]},
                 "region_attributes": {"class": "lumbar"}}]}
    meta.update(entry)
    via = tmp_path / "via.json"
    via.write_text(json.dumps({"_via_img_metadata": {"a.png": meta}}))
    return via, images


def _polygon(xs, ys, attrs=None):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": {"class": "lumbar"} if attrs is None else attrs}


@pytest.mark.parametrize("regions, entry, message", [
    ([_polygon("10,20,30", [1, 2, 3])], {}, "all_points_x is str"),           # string coords
    ([_polygon(None, [1, 2, 3])], {}, "all_points_x is NoneType"),            # null coords
    ([_polygon([[1, 2], [3, 4], 5], [1, 2, 3])], {}, "holds [1, 2], not a number"),  # nested
    ([_polygon([1, float("nan"), 3], [1, 2, 3])], {}, "non-finite coordinate"),  # NaN
    ([_polygon([1, 2, 3], [1, 2, 3], attrs=["lumbar"])], {}, "region_attributes is list"),
    (["not an object"], {}, "region is str, not an object"),                  # region type
    (None, {"size": "abc"}, "size 'abc' is not a number of bytes"),           # size
    ("everything", {}, "regions is str, not a list"),                         # regions type
])
def test_via_values_of_the_wrong_type(tmp_path, capsys, regions, entry, message):
    via, images = _via(tmp_path, regions, **entry)
    code, err = cli(capsys, "convert", "--input", str(via), "--images", str(images),
                    "--output", str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet")
    one_line_error(code, err, message, "via.json", "image a.png")
    assert not (tmp_path / "out").exists()


def test_csv_with_a_size_that_is_no_number(tmp_path, capsys):
    _, images = _via(tmp_path)
    csv_file = tmp_path / "via.csv"
    csv_file.write_text("filename,file_size,file_attributes,region_count,region_id,"
                        "region_shape_attributes,region_attributes\n"
                        'a.png,big,{},1,0,"{""name"":""polygon"",""all_points_x"":[1,9,9],'
                        '""all_points_y"":[1,1,9]}","{""class"":""lumbar""}"\n')
    code, err = cli(capsys, "convert", "--input", str(csv_file), "--images", str(images),
                    "--output", str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet")
    one_line_error(code, err, "size 'big' is not a number of bytes", "via.csv")


@pytest.mark.parametrize("what", ["params", "via", "csv", "images_csv", "manifest"])
def test_invalid_utf8_is_one_line(tmp_path, capsys, what):
    bad = b"\xff\xfe\x00not utf-8 \xc3\x28"
    via, images = _via(tmp_path)
    if what == "params":
        (tmp_path / "params.yaml").write_bytes(bad)
        args = ["convert", "--input", str(via), "--images", str(images), "--output",
                str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    elif what in ("via", "csv"):
        f = tmp_path / f"bad.{'json' if what == 'via' else 'csv'}"
        f.write_bytes(bad)
        args = ["convert", "--input", str(f), "--images", str(images), "--output",
                str(tmp_path / "out"), "--params", NO_PARAMS]
    elif what == "images_csv":
        (tmp_path / "processed").mkdir()
        (tmp_path / "processed" / "images.csv").write_bytes(bad)
        (tmp_path / "processed" / "coco.json").write_text("{}")
        args = ["split", "--input", str(tmp_path / "processed"), "--output",
                str(tmp_path / "splits"), "--params", NO_PARAMS]
    else:
        (tmp_path / "m.csv").write_bytes(bad)
        args = ["retrieve", "--output", str(tmp_path / "pacs"), "--manifest",
                str(tmp_path / "m.csv"), "--force", "--params", NO_PARAMS]
    code, err = cli(capsys, *args, "--quiet")
    one_line_error(code, err, "UTF-8")


def test_images_that_do_not_decode_leave_nothing_behind(tmp_path, capsys):
    via, images = _via(tmp_path)
    good = (images / "a.png").read_bytes()
    cv2.imwrite(str(images / "b.png"), np.full((100, 60), 90, np.uint8))
    meta = json.loads(via.read_text())
    meta["_via_img_metadata"]["b.png"] = {**meta["_via_img_metadata"]["a.png"], "filename": "b.png"}
    via.write_text(json.dumps(meta))
    (images / "b.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    args = ["convert", "--input", str(via), "--images", str(images), "--output",
            str(tmp_path / "out"), "--params", NO_PARAMS, "--quiet", "--workers", "1"]
    code, err = cli(capsys, *args)
    one_line_error(code, err, "does not decode", "b.png")
    assert not (tmp_path / "out").exists()  # a.png's masks were rendered, then removed
    # a header claiming 30000 x 30000 pixels
    hdr = bytearray(good)
    hdr[16:24] = (30000).to_bytes(4, "big") * 2
    (images / "b.png").write_bytes(bytes(hdr))
    code, err = cli(capsys, *args)
    one_line_error(code, err, "30000x30000", "b.png")
    assert not (tmp_path / "out").exists()
    # an existing output keeps its earlier, complete state
    (images / "b.png").write_bytes(good)
    assert cli(capsys, *args)[0] == 0
    before = {p: p.read_bytes() for p in files_under(tmp_path / "out")}
    (images / "b.png").write_bytes(good[:100])
    meta["_via_img_metadata"]["b.png"]["regions"][0]["shape_attributes"]["all_points_x"][0] = 12
    via.write_text(json.dumps(meta))
    code, err = cli(capsys, *args)
    one_line_error(code, err, "b.png")
    assert {p: p.read_bytes() for p in files_under(tmp_path / "out")} == before


@pytest.mark.parametrize("command", ["anonymize", "export", "convert", "phantom"])
def test_an_output_folder_that_is_a_file(tmp_path, capsys, command):
    target = tmp_path / "taken"
    target.write_text("a file")
    via, images = _via(tmp_path)
    (tmp_path / "dcm").mkdir()
    save(image(PatientIdentityRemoved="YES", PatientID="SP00"), tmp_path / "dcm" / "a.dcm")
    args = {"anonymize": ["--input", str(tmp_path / "dcm"), "--private", str(tmp_path / "p")],
            "export": ["--input", str(tmp_path / "dcm")],
            "convert": ["--input", str(via), "--images", str(images)],
            "phantom": ["--n", "1", "--height", "128", "--width", "64"]}[command]
    for out in (target, target / "below"):
        code, err = cli(capsys, command, *args, "--output", str(out), "--params", NO_PARAMS,
                        "--quiet", "--workers", "1")
        one_line_error(code, err, "taken")
    assert target.read_text() == "a file"


@pytest.mark.parametrize("section, text, message", [
    ("convert", "contact_sheet_size: 0", "key 'convert.contact_sheet_size' must be >= 1"),
    ("export", "clahe_tiles: 0", "key 'export.clahe_tiles' must be >= 1"),
    ("export", "png_compression: 99", "key 'export.png_compression' must be <= 9"),
    ("anonymize", "private_allowlist: ['0009;ACME;10']",
     "key 'anonymize.private_allowlist[0]' is malformed"),
    ("retrieve", "port: 70000", "key 'retrieve.port' must be <= 65535"),
])
def test_params_out_of_range_name_the_key(tmp_path, capsys, section, text, message):
    (tmp_path / "params.yaml").write_text(f"{section}:\n  {text}\n")
    via, images = _via(tmp_path)
    (tmp_path / "dcm").mkdir()
    args = {"convert": ["--input", str(via), "--images", str(images)],
            "export": ["--input", str(tmp_path / "dcm")],
            "anonymize": ["--input", str(tmp_path / "dcm"), "--private", str(tmp_path / "p")],
            "retrieve": ["--force"]}[section]
    code, err = cli(capsys, section, *args, "--output", str(tmp_path / "out"), "--params",
                    str(tmp_path / "params.yaml"), "--quiet")
    one_line_error(code, err, message, "params.yaml")
    assert not (tmp_path / "out").exists()


def test_port_out_of_range_on_the_command_line(tmp_path, capsys):
    code, err = cli(capsys, "retrieve", "--output", str(tmp_path / "o"), "--port", "70000",
                    "--force", "--params", NO_PARAMS)
    one_line_error(code, err, "70000")


@pytest.mark.parametrize("broken", ["via", "ledger", "provenance"])
def test_phantom_annotations_on_malformed_inputs(tmp_path, capsys, broken):
    via = tmp_path / "via.json"
    via.write_text(json.dumps({"_via_img_metadata": {}}))
    (tmp_path / "png" / "provenance").mkdir(parents=True)
    priv = tmp_path / "private"
    priv.mkdir()
    (priv / "ledger.json").write_text(json.dumps({"patients": {}, "instances": {}}))
    if broken == "via":
        via.write_text('{"_via_img_metadata": {"x": {"filename": "a.png", "regions": 5}}}')
    elif broken == "ledger":
        (priv / "ledger.json").write_text('{"patients": [')
    else:
        (tmp_path / "png" / "provenance" / "a.json").write_text('{"image": "a.png"}')
    code, err = cli(capsys, "phantom-annotations", "--via", str(via), "--png",
                    str(tmp_path / "png"), "--private", str(priv), "--output",
                    str(tmp_path / "ann"), "--holdout-output",
                    str(tmp_path / "held.json"), "--quiet")
    one_line_error(code, err, {"via": "via.json", "ledger": "ledger.json",
                               "provenance": "a.json"}[broken])
    assert not (tmp_path / "ann").exists() and not (tmp_path / "held.json").exists()


# --------------------------------------------------------------------------------------------
# 6. temporary files left by a killed run are removed by the next


def test_reruns_remove_stale_temp_files(tmp_path, capsys):
    src = tmp_path / "in"
    save(image(), src / "a.dcm")
    priv = prepare_private(tmp_path / "private")
    anonymize_tree(src, tmp_path / "anon", priv, load_or_create_salt(priv), AnonymizeConfig())
    export_tree(tmp_path / "anon", tmp_path / "png", ExportConfig())
    via, images = _via(tmp_path)
    assert cli(capsys, "convert", "--input", str(via), "--images", str(images), "--output",
               str(tmp_path / "conv"), "--params", NO_PARAMS, "--quiet")[0] == 0
    left = []
    for folder in ("anon", "png", "conv"):  # what kill -9 leaves: atomic writes cut short
        sub = next(p for p in (tmp_path / folder).rglob("*") if p.is_dir())
        for d in (tmp_path / folder, sub):
            stale = d / f".a.dcm.1234abcd{TEMP_MARK}.part"
            stale.write_bytes(b"half")
            left.append(stale)
    anonymize_tree(src, tmp_path / "anon", priv, load_or_create_salt(priv), AnonymizeConfig())
    export_tree(tmp_path / "anon", tmp_path / "png", ExportConfig())
    assert cli(capsys, "convert", "--input", str(via), "--images", str(images), "--output",
               str(tmp_path / "conv"), "--params", NO_PARAMS, "--quiet")[0] == 0
    assert not [p for p in left if p.exists()]


def test_zero_clahe_tiles_refused_by_the_library_too(tmp_path):
    """OpenCV kills the process (SIGFPE) on zero tiles: export refuses before any worker."""
    from converters.core.errors import InvalidConfigError
    save(image(PatientIdentityRemoved="YES", PatientID="SP00"), tmp_path / "anon" / "a.dcm")
    with pytest.raises(InvalidConfigError, match="clahe_tiles must be >= 1"):
        export_tree(tmp_path / "anon", tmp_path / "png",
                    ExportConfig(equalization="clahe", clahe_tiles=0), workers=2)
    assert not (tmp_path / "png").exists()
