"""De-identification: the action table (PS3.15 Annex E and the radiograph's allowlist) applied
attribute by attribute, leak scans on the phantom and on pydicom's real vendor files, dciodvfy,
the private folder, burned-in text, non-image and truncated objects, the pixel budget,
failures, and incremental re-runs. (The marker-everywhere class test: test_deid_leak.py.)"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from conftest import dicom_image
from converters.anonymize import (AnonymizeConfig, action_table, anonymize_dataset,
                                  anonymize_tree, table_actions)
from converters.errors import UnsafeLocationError
from converters.io import TEMP_MARK
from converters.ledger import load_or_create_salt, prepare_private

SALT = b"\x01" * 32
VALUES = {"PN": "LEAKY^PERSON", "LO": "LEAKY LONG", "SH": "LEAKYSH", "ST": "LEAKY TEXT",
          "LT": "LEAKY LONG TEXT", "UT": "LEAKY UT", "CS": "LEAKYCS", "DA": "20150317",
          "TM": "101112", "DT": "20150317101112", "UI": "1.2.3.4.5.6.7.8.9", "AS": "045Y",
          "IS": "7", "DS": "7.5"}


def _pydicom_files() -> list[Path]:
    """The real DICOM files shipped inside the pydicom package (no download attempted)."""
    import pydicom.data
    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def _image(**extra) -> Dataset:
    """A 4x4 CR object (pixels 0..15) of patient P-123456, DOE^JANE."""
    return dicom_image(4, **{"PatientID": "P-123456", "PatientName": "DOE^JANE",
                             "SOPInstanceUID": "1.2.3.999.1", **extra})


def _table_dataset() -> tuple[Dataset, dict[int, str]]:
    """A dataset carrying every attribute of the action table that pydicom knows (text VRs
    and sequences), with identifying values."""
    ds = _image()
    carried = {}
    for tag in action_table().rows:
        if tag in (0x00100010, 0x00100020, 0x00080018, 0x00080016, 0x00280008, 0x7FE00010) \
                or tag >> 16 in (0x0000, 0x0002) or tag in ds:
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr == "SQ":
            item = Dataset()
            item.CodeMeaning = "LEAKY ITEM"
            item.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.10"
            ds.add_new(tag, vr, [item])
        elif vr in VALUES:
            ds.add_new(tag, vr, VALUES[vr])
        else:
            continue
        carried[tag] = vr
    return ds, carried


def _audited(audit: dict) -> set[str]:
    """Every keyword (or ``(GGGG,EEEE)``) the audit names an action for."""
    return {name for per in audit["counts"].values() for name in per}


@pytest.mark.parametrize("modified_dates", [True, False])
def test_every_table_attribute_is_handled_as_the_table_says(modified_dates):
    """The whole action table (PS3.15 Table E.1-1 rows and the radiograph's allowlist),
    attribute by attribute, with and without the modified-dates option."""
    ds, carried = _table_dataset()
    assert len(carried) > 500
    before = {t: ds[t].value for t in carried}
    options = AnonymizeConfig(retain_longitudinal_modified_dates=modified_dates)
    actions = table_actions(options)
    outcome = anonymize_dataset(ds, SALT, options, file="t.dcm")
    assert outcome.status == "anonymized"
    audited = _audited(outcome.audit)
    set_by_spinepipe = {0x00120062, 0x00120063, 0x00120064, 0x00280303}
    for tag, vr in carried.items():
        action, check = actions[tag]
        name = keyword_for_tag(tag) or hex(tag)
        present = tag in ds
        value = ds[tag].value if present else None
        if action == "S":
            assert present and value and value != before[tag], name   # shifted, not removed
            assert str(value)[4:8] != "0317" or str(value)[:4] != "2015", name
        elif action in ("X", "N", "C"):   # C: no standard code in this dataset: removed
            assert not present or tag in set_by_spinepipe, name
        elif action == "Z":
            assert present and not value, name
        elif action == "D":
            assert present and value != before[tag], name
        elif action == "U":
            assert str(value).startswith("2.25."), name
        elif action == "Q":
            assert str(value[0].ReferencedSOPInstanceUID).startswith("2.25."), name
            assert "CodeMeaning" not in value[0], name   # free text without a code: removed
        elif action == "K" and check == "registry":   # a class UID outside PS3.6: remapped
            assert str(value).startswith("2.25."), name
        elif action == "K":   # kept only if its check allows the value, else emptied
            assert present and value in (before[tag], "", None), name
        assert name in audited, name
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and (("113107" in codes) is modified_dates)


def test_pseudonyms_uids_and_date_shifts_are_consistent():
    a1 = _image(StudyDate="20200101", StudyInstanceUID="1.2.3.50")
    a2 = _image(StudyDate="20200301", StudyInstanceUID="1.2.3.51", SOPInstanceUID="1.2.3.999.2")
    b = _image(PatientID="OTHER", StudyDate="20200101", StudyInstanceUID="1.2.3.50")
    o1, o2, o3 = (anonymize_dataset(d, SALT, AnonymizeConfig()) for d in (a1, a2, b))
    assert o1.patient_pseudonym == o2.patient_pseudonym != o3.patient_pseudonym
    assert a1.StudyInstanceUID == b.StudyInstanceUID  # same input UID, same output UID
    assert a1.StudyInstanceUID != a2.StudyInstanceUID
    d1 = np.datetime64(f"{a1.StudyDate[:4]}-{a1.StudyDate[4:6]}-{a1.StudyDate[6:]}")
    d2 = np.datetime64(f"{a2.StudyDate[:4]}-{a2.StudyDate[4:6]}-{a2.StudyDate[6:]}")
    assert int((d2 - d1).astype(int)) == 60  # the interval between a patient's studies is kept
    assert -3650 <= o1.date_shift_days <= -365
    other = _image()
    anonymize_dataset(other, b"\x02" * 32, AnonymizeConfig())
    assert other.PatientID != a1.PatientID  # another project's salt, other pseudonyms
    for uid in (a1.SOPInstanceUID, a1.StudyInstanceUID):
        assert len(uid) <= 64 and all(c.isdigit() or c == "." for c in uid)


def test_private_tags_removed_unless_allowlisted():
    ds = _image()
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x01, "LO", "P-123456")
    block.add_new(0x02, "DS", "1.5")
    kept = copy.deepcopy(ds)
    anonymize_dataset(ds, SALT, AnonymizeConfig())
    assert not any(e.tag.is_private for e in ds)
    anonymize_dataset(kept, SALT, AnonymizeConfig(private_allowlist=["0011,ACME,02"]))
    assert kept[0x00111002].value == "1.5" and kept[0x00110010].value == "ACME"
    assert 0x00111001 not in kept
    assert "113111" in [c.CodeValue for c in kept.DeidentificationMethodCodeSequence]


IDENTIFYING_KEYWORDS = {"PatientID", "AccessionNumber", "InstitutionName", "InstitutionAddress",
                        "StationName", "DeviceSerialNumber", "IssuerOfPatientID", "StudyID",
                        "OtherPatientIDs", "FrameOfReferenceUID"}


def _originals(ds: Dataset) -> set[str]:
    """Identifying values of an input object (names, IDs, dates, accession, instance UIDs,
    institution, physicians), long enough to scan for without chance hits."""
    values: set[str] = set()

    def walk(d: Dataset) -> None:
        for e in d:
            if e.VR == "SQ":
                for item in e.value:
                    walk(item)
                continue
            if e.tag.is_private or e.value is None or isinstance(e.value, bytes):
                continue  # private blocks are checked by tag: they must all be gone
            kw = e.keyword or ""
            if e.VR == "PN":
                parts = [p for v in (e.value if e.VM > 1 else [e.value])
                         for p in str(v).replace("^", " ").split()]
            elif e.VR in ("DA", "DT") or kw in IDENTIFYING_KEYWORDS or (
                    e.VR == "UI" and kw.endswith("InstanceUID")):
                parts = [str(v).strip() for v in (e.value if e.VM > 1 else [e.value])]
            else:
                continue
            values.update(p for p in parts if len(p) >= 6 and not p.startswith("1.2.840.10008."))

    walk(ds)
    return {v for v in values if len(set(v)) > 2}  # not "00000000" or "11111111"


def _leak_scan(inputs: list[Path], output: Path, private: Path | None = None,
               root: Path | None = None) -> list[str]:
    """Original identifying values found in output bytes or output file names.

    With ``private`` (the anonymization's private folder) and ``root`` (its input folder),
    each de-identified object is
    scanned for the values of its own input: a shifted date of one object may fall on a date
    that another object carried, which is chance, not a leak. Every other output file
    (reports, audit records) is scanned for the values of all inputs.
    """
    needles: dict[Path, set[bytes]] = {}
    retained = []  # manufacturers (kept with retain_device_identity) may share a name
    for f in inputs:
        try:
            ds = pydicom.dcmread(f, force=True)
        except Exception:
            continue
        retained += [str(ds.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName")]
        needles[f] = {v.encode("latin-1", "ignore") for v in _originals(ds)}
    kept = " | ".join(retained).encode("latin-1", "ignore")
    needles = {f: {n for n in ns if n not in kept} for f, ns in needles.items()}
    everything = {n: f.name for f, ns in needles.items() for n in ns}
    source_of: dict[str, Path] = {}
    if private is not None:
        rows = json.loads((private / "anonymize_report.json").read_text())
        source_of = {row["output"]: root / rel for rel, row in rows.items() if row.get("output")}
    found = []
    for p in output.rglob("*"):
        if not p.is_file():
            continue
        # the bytes (preamble, sequence items, every element) and the path (file names)
        blob = p.read_bytes() + str(p.relative_to(output)).encode()
        src = source_of.get(str(p.relative_to(output)))
        candidates = {n: src.name for n in needles.get(src, ())} if src else everything
        found += [f"{n!r} from {name} in {p.name}" for n, name in candidates.items() if n in blob]
    return found


def test_no_identifier_leaks_from_the_phantom(small_phantom, tmp_path):
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(small_phantom / "dicom", tmp_path / "out", priv,
                            load_or_create_salt(priv), AnonymizeConfig())
    assert report.counts.get("anonymized", 0) >= 1 and not report.failed
    inputs = sorted((small_phantom / "dicom").rglob("*.dcm"))
    assert _leak_scan(inputs, tmp_path / "out", priv, small_phantom / "dicom") == []


def test_no_identifier_leaks_from_real_vendor_files(tmp_path):
    """pydicom's own test files: many vendors, transfer syntaxes, private blocks."""
    src = tmp_path / "in" / "nested" / "deeper"
    src.mkdir(parents=True)
    files = _pydicom_files()
    assert len(files) > 40
    for f in files:
        shutil.copy(f, src / f.name)
    priv = prepare_private(tmp_path / "private")
    # the header leak scan needs the objects written: OCR (which quarantines the ultrasound
    # examples' burned-in labels) is off here and tested in test_burned_in / test_deid_leak
    report = anonymize_tree(tmp_path / "in", tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig(ocr=False), workers=2)
    assert report.counts["anonymized"] > 30
    # every file is accounted for: anonymized, skipped, quarantined or failed, with a reason
    assert sum(report.counts.values()) == len(files)
    for row in report.private_rows.values():
        assert row["status"] == "anonymized" or row["reason"]
    assert _leak_scan(sorted(src.iterdir()), tmp_path / "out", priv, tmp_path / "in") == []
    for out in (tmp_path / "out").rglob("*.dcm"):
        assert not any(e.tag.is_private for e in pydicom.dcmread(out)), out.name
    # the public report names no input path (archive paths carry identifiers)
    public = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "nested" not in json.dumps(public)


def _dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {" ".join(l.split()[:12]) for l in lines if l.startswith("Error")}


def test_outputs_pass_dciodvfy_with_no_new_error(small_phantom, tmp_path):
    assert shutil.which("dciodvfy"), "dicom3tools missing: .ci/run installs it"
    inputs = {}
    extra = tmp_path / "in"
    shutil.copytree(small_phantom / "dicom", extra)
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        match = [f for f in _pydicom_files() if f.name == name]
        shutil.copy(match[0], extra / name)
    priv = prepare_private(tmp_path / "private")
    anonymize_tree(extra, tmp_path / "out", priv, load_or_create_salt(priv), AnonymizeConfig())
    rows = json.loads((priv / "anonymize_report.json").read_text())
    checked = 0
    for rel, row in rows.items():
        if row["status"] != "anonymized":
            continue
        inputs[rel] = row["output"]
        new = _dciodvfy_errors(tmp_path / "out" / row["output"]) - _dciodvfy_errors(extra / rel)
        assert not new, f"{rel}: {new}"
        checked += 1
    assert checked >= 8


def test_private_folder_is_private(tmp_path, small_phantom):
    priv = prepare_private(tmp_path / "private")
    anonymize_tree(small_phantom / "dicom", tmp_path / "out", priv, load_or_create_salt(priv),
                   AnonymizeConfig())
    assert stat.S_IMODE(priv.stat().st_mode) == 0o700
    for f in priv.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    ledger = json.loads((priv / "ledger.json").read_text())
    ids = {pydicom.dcmread(f).PatientID for f in (small_phantom / "dicom").rglob("*.dcm")}
    assert {p["patient_id"] for p in ledger["patients"].values()} <= ids
    assert not any(p.name in ("salt", "ledger.json") for p in (tmp_path / "out").rglob("*"))
    for bad in (tmp_path / "out" / "private", tmp_path / "data" / "private"):
        with pytest.raises(UnsafeLocationError, match="must not be"):
            prepare_private(bad, forbidden=[tmp_path / "out"])


def test_burned_in_images_are_quarantined_or_blanked():
    q = _image(BurnedInAnnotation="YES")
    assert anonymize_dataset(q, SALT, AnonymizeConfig()).status == "quarantined"
    assert q.PatientID == "P-123456"  # untouched, and nothing would be written
    b = _image(BurnedInAnnotation="YES")
    out = anonymize_dataset(b, SALT, AnonymizeConfig(burned_in="blank",
                                                      blank_regions=[[0, 0, 4, 2]]))
    assert out.status == "anonymized" and b.BurnedInAnnotation == "NO"
    px = b.pixel_array
    assert (px[:2] == 0).all() and (px[2:] == np.arange(8, 16).reshape(2, 4)).all()
    assert "113101" in [c.CodeValue for c in b.DeidentificationMethodCodeSequence]


def test_reports_skips_failures_and_leaves_inputs_alone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sr = [f for f in _pydicom_files() if f.name == "test-SR.dcm"][0]
    shutil.copy(sr, src / "report.dcm")
    (src / "notes.txt").write_text("not dicom at all")
    good = _image()
    good.save_as(src / "good.dcm", enforce_file_format=True)
    truncated = (src / "good.dcm").read_bytes()[:300]
    (src / "truncated.dcm").write_bytes(truncated)
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    rows = report.private_rows
    assert rows["good.dcm"]["status"] == "anonymized"
    assert rows["report.dcm"]["status"] == "skipped" and "Storage" in rows["report.dcm"]["reason"]
    assert rows["notes.txt"]["status"] == "failed" and "not a DICOM file" in rows["notes.txt"]["reason"]
    assert rows["truncated.dcm"]["status"] == "failed"
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    assert not list((tmp_path / "out").rglob(f"*{TEMP_MARK}*"))


def test_rerun_touches_only_what_changed(tmp_path, small_phantom):
    src = tmp_path / "in"
    shutil.copytree(small_phantom / "dicom", src)
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    first = anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig())
    second = anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig())
    assert all(r.get("reused") for r in second.private_rows.values())
    assert second.counts == first.counts
    victim = sorted(src.rglob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes())  # new mtime
    third = anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig())
    redone = [k for k, r in third.private_rows.items() if not r.get("reused")]
    assert redone == [str(victim.relative_to(src))]


def test_a_second_input_folder_keeps_the_outputs_of_the_first(tmp_path, small_phantom):
    """Adding the PACS folder renames every input key; no output may be lost on the way."""
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    anonymize_tree(small_phantom / "dicom", tmp_path / "out", priv, salt, AnonymizeConfig())
    before = sorted(p.name for p in (tmp_path / "out").rglob("*.dcm"))
    (tmp_path / "pacs").mkdir()
    report = anonymize_tree([small_phantom / "dicom", tmp_path / "pacs"], tmp_path / "out", priv,
                            salt, AnonymizeConfig())
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.dcm")) == before
    assert all(k.startswith("dicom/") for k in report.private_rows)


def test_same_object_twice_is_reported_not_raced(tmp_path):
    """Two inputs with one SOP Instance UID: the first (in path order) wins, every run."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    good = _image()
    good.save_as(src / "a" / "x.dcm", enforce_file_format=True)
    good.save_as(src / "b" / "x.dcm", enforce_file_format=True)
    for run in range(3):
        priv = prepare_private(tmp_path / f"private{run}")
        report = anonymize_tree(src, tmp_path / f"out{run}", priv, load_or_create_salt(priv),
                                AnonymizeConfig(), workers=2)
        rows = report.private_rows
        assert rows["a/x.dcm"]["status"] == "anonymized"
        assert rows["b/x.dcm"]["status"] == "skipped" and "a/x.dcm" in rows["b/x.dcm"]["reason"]
        assert len(list((tmp_path / f"out{run}").rglob("*.dcm"))) == 1
        assert not list((tmp_path / f"out{run}").rglob(f"*{TEMP_MARK}*"))


def test_elements_with_a_wrong_vr_are_still_cleaned(tmp_path):
    """pydicom's badVR.dcm: a reference sequence stored with a wrong VR still has its UID
    remapped (the dictionary's VR is used), and nothing undecodable survives."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy([f for f in _pydicom_files() if f.name == "badVR.dcm"][0], src / "badVR.dcm")
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    assert report.counts == {"anonymized": 1}
    assert _leak_scan([src / "badVR.dcm"], tmp_path / "out") == []


def test_a_file_cut_inside_an_element_is_an_error_not_a_skip(tmp_path, capsys):
    """A header cut in the middle of the SOP Class UID's value was "skipped: non-image
    object" with exit 0: now an error naming the file (the value is shorter than its
    declared length)."""
    from pipeline.cli import main
    src = tmp_path / "in"
    src.mkdir()
    whole = tmp_path / "whole.dcm"
    _image().save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    cut = data.index(b"1.2.840.10008.5.1.4.1.1.1", 200) + 5   # inside SOPClassUID
    (src / "cut.dcm").write_bytes(data[:cut])
    code = main(["anonymize", "--input", str(src), "--output", str(tmp_path / "out"),
                 "--private", str(tmp_path / "private"), "--params", "/nonexistent/p.yaml",
                 "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "cut.dcm" in err and "Traceback" not in err
    assert "truncated" in err and "skipped" not in err
    rows = json.loads((tmp_path / "private" / "anonymize_report.json").read_text())
    assert rows["cut.dcm"]["status"] == "failed"


def test_a_tiny_jpeg2000_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    """A few-kB JPEG 2000 object whose header claims 16000 x 16000 pixels: refused from the
    header (pixel budget, 64 MP), never decoded into gigabytes."""
    from pydicom.uid import JPEG2000Lossless
    ds = dicom_image(64, PatientID="P-1", SOPInstanceUID="1.2.3.999.7")
    ds.compress(JPEG2000Lossless, ds.pixel_array)
    ds.Rows = ds.Columns = 16000
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "bomb.dcm", enforce_file_format=True)
    assert (src / "bomb.dcm").stat().st_size < 4000
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    row = report.private_rows["bomb.dcm"]
    assert row["status"] == "failed" and "64,000,000" in row["reason"], row
    assert not list((tmp_path / "out").rglob("*.dcm"))


@pytest.mark.parametrize("retain", [False, True])
def test_the_retain_options_switch_their_rows(retain):
    """Retain Patient Characteristics / Device Identity (PS3.15 options): kept when on (a
    patient-characteristics value still checked), removed or emptied when off."""
    ds = _image(PatientSex="F", PatientAge="045Y", PatientWeight="61.5", Manufacturer="ACME",
                StationName="XR-ROOM-3", DeviceSerialNumber="SN1001", SmokingStatus="MAYBE")
    options = AnonymizeConfig(retain_patient_characteristics=retain,
                              retain_device_identity=retain)
    outcome = anonymize_dataset(ds, SALT, options)
    assert outcome.status == "anonymized"
    got = {kw: str(ds.get(kw, "<removed>")) for kw in (
        "PatientSex", "PatientAge", "PatientWeight", "Manufacturer", "StationName",
        "DeviceSerialNumber", "SmokingStatus")}
    if retain:
        assert got == {"PatientSex": "F", "PatientAge": "045Y", "PatientWeight": "61.5",
                       "Manufacturer": "ACME", "StationName": "XR-ROOM-3",
                       "DeviceSerialNumber": "SN1001", "SmokingStatus": ""}  # not a term: emptied
        codes = {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        assert {"113108", "113109"} <= codes
    else:
        assert got == {"PatientSex": "", "PatientAge": "<removed>", "PatientWeight": "<removed>",
                       "Manufacturer": "", "StationName": "", "DeviceSerialNumber": "",
                       "SmokingStatus": "<removed>"}


@pytest.mark.parametrize("ts", ["", "1.2.3", "../../x"])
def test_a_transfer_syntax_the_standard_does_not_define_is_named(tmp_path, ts):
    """Found by the property fuzz: an empty Transfer Syntax UID reached an AttributeError."""
    from pydicom import config

    from conftest import dicom_image

    src = tmp_path / "in"
    src.mkdir()
    ds = dicom_image(8)
    ds.file_meta.TransferSyntaxUID = ts
    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(src / "a.dcm", implicit_vr=False, little_endian=True)
    finally:
        config.settings.writing_validation_mode = saved
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    assert report.counts == {"failed": 1}
    reason = next(iter(report.private_rows.values()))["reason"]
    assert "transfer syntax" in reason and "(0002,0010)" in reason, reason
