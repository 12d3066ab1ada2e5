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
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import dicom_image, dcmtk
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.deid_engine import anonymize_dataset
from converters.dicom.anonymize import anonymize_tree
from converters.core.errors import UnsafeLocationError
from converters.core.files import TEMP_MARK, output_root
from converters.dicom.ledger import load_or_create_salt, prepare_private

SALT = b"\x01" * 32
SPINEPIPE = str(Path(sys.executable).parent / "spinepipe")


def _pydicom_files() -> list[Path]:
    """The real DICOM files shipped inside the pydicom package (no download attempted)."""
    import pydicom.data
    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def _image(**extra) -> Dataset:
    """A 4x4 CR object (pixels 0..15) of patient P-123456, DOE^JANE."""
    return dicom_image(4, **{"PatientID": "P-123456", "PatientName": "DOE^JANE",
                             "SOPInstanceUID": "1.2.3.999.1", **extra})


# --------------------------------------------------------------------------------------------
# PS3.15 Annex E, from the standard's own rows (tests/data/ps3.15_annex_e_2026c.tsv), never from
# the product's action table: each attribute's expected outcome in an anonymized file.

ANNEX_E = "ps3.15_annex_e_2026c.tsv"
UID_PLANTED = "1.2.826.0.1.3680043.10.511.7"   # every UID attribute of the standard's table
UID_OWN = "1.2.826.0.1.3680043.10.511.8"       # the object's own SOP Instance UID
LEAK = "LEAKY"
PLANTED = {"PN": "LEAKY^PERSON", "LO": "LEAKY LONG", "SH": "LEAKYSH", "ST": "LEAKY TEXT",
           "LT": "LEAKY LONG TEXT", "UT": "LEAKY UT", "UC": "LEAKY UC", "CS": "LEAKYCS",
           "AE": "LEAKYAE", "UR": "http://leaky.example/x", "DA": "20150317", "TM": "101112",
           "DT": "20150317101112", "UI": UID_PLANTED, "AS": "045Y", "IS": "7", "DS": "7.5",
           "US": 7, "SS": 7, "UL": 7, "SL": 7, "UV": 7, "SV": 7, "FL": 7.5, "FD": 7.5,
           "AT": 0x00100010, "OB": b"LEAKYBIN", "OW": b"LEAKYBIN", "OF": b"LEAKYBIN",
           "OD": b"LEAKYBIN", "OL": b"LEAKYBIN", "OV": b"LEAKYBIN", "UN": b"LEAKYBIN"}
#: observable outcomes each Basic Profile action allows (PS3.15 E.1.1; compounds: one of them)
BASIC = {"D": {"replaced"}, "Z": {"emptied", "replaced"}, "X": {"removed"}, "U": {"remapped"},
         "X/Z": {"removed", "emptied"}, "X/D": {"removed", "replaced"},
         "Z/D": {"emptied", "replaced"}, "X/Z/D": {"removed", "emptied", "replaced"},
         "X/Z/U*": {"removed", "emptied", "remapped"}}
_NO_DUMMY = "a {} has no dummy value: emptied (zero length, still present), which Z allows"
#: spinepipe's reviewed deviations from the Basic Profile (edition 2026c): tag -> (outcome,
#: reason). Everything else must do what the standard's row says.
DEVIATIONS = {
    0x00100030: ("emptied", "Patient's Birth Date: emptied even with the modified-dates "
                 "option (a birth date shifted by up to ten years still gives the age)"),
    **{tag: ("emptied", _NO_DUMMY.format("sequence")) for tag in (
        0x00340001,   # Flow Identifier Sequence
        0x00401101,   # Person Identification Code Sequence
        0x0040A073,   # Verifying Observer Sequence
        0x0040A730,   # Content Sequence
        0x00700001)},  # Graphic Annotation Sequence
    **{tag: ("emptied", _NO_DUMMY.format("binary or URI value")) for tag in (
        0x00340002,   # Flow Identifier (OB)
        0x00340005,   # Source Identifier (OB)
        0x00340007,   # Frame Origin Timestamp (OB)
        0x00420011,   # Encapsulated Document (OB)
        0x00720065,   # Selector OB Value
        0x0072006D,   # Selector UN Value
        0x00720071,   # Selector UR Value
        0x04000115)},  # Certificate of Signer (OB)
}


def _annex_e_rows() -> list[tuple[str, str, str, str]]:
    """(tag, name, basic action, modified-dates option) of every row of the standard's table."""
    from conftest import data_file

    lines = data_file(ANNEX_E).read_text(encoding="utf-8").splitlines()
    assert "2026c" in lines[0] + lines[1] and "dicom-anonymizer" in "".join(lines[:4])
    rows = [tuple((line.split("\t") + [""])[:4]) for line in lines
            if line and not line.startswith("#") and not line.startswith("tag\t")]
    return rows


def _tag_of(text: str) -> int:
    """``(GGGG,EEEE)`` as an int; a repeating group's ``xx`` as its second instance (02),
    a masked element as 3000 (Curve / Overlay Data)."""
    group, element = text[1:5].replace("xx", "02"), text[6:10].replace("xxxx", "3000")
    return int(group + element, 16)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _item() -> Dataset:
    item = Dataset()
    item.CodeMeaning = "LEAKY ITEM"
    item.ReferencedSOPInstanceUID = UID_PLANTED
    return item


def _annex_e_file(path: Path) -> dict[int, tuple[str, str, str]]:
    """A real CR file carrying a value for every attribute of the standard's table that
    pydicom's dictionary knows (command elements excepted: never in a stored object).
    Returns tag -> (name, basic action, modified-dates option) of what it carries."""
    ds = _image(SOPInstanceUID=UID_OWN)
    ds.file_meta.MediaStorageSOPInstanceUID = UID_OWN
    carried = {}
    for text, name, basic, dates in _annex_e_rows():
        tag = _tag_of(text)
        if tag >> 16 == 0x0000:
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        carried[tag] = (name, basic, dates)
        if tag == 0x00020003 or tag == 0x00080018:
            continue   # the object's own UID, planted above
        value = Sequence([_item()]) if vr == "SQ" else PLANTED[vr]
        ds.add_new(tag, vr, value)
    ds.save_as(path, enforce_file_format=True)
    return carried


@pytest.fixture(scope="module", params=[True, False], ids=["modified_dates", "no_options"])
def annex_e(request, tmp_path_factory):
    """The standard's attributes before and after ``anonymize_tree`` (with and without the
    Retain Longitudinal Temporal Information with Modified Dates option)."""
    root = tmp_path_factory.mktemp("annex_e")
    (root / "in").mkdir()
    carried = _annex_e_file(root / "in" / "annex_e.dcm")
    priv = prepare_private(root / "private")
    options = AnonymizeConfig(retain_longitudinal_modified_dates=request.param)
    report = anonymize_tree(root / "in", root / "out", priv, load_or_create_salt(priv), options)
    assert report.counts == {"anonymized": 1}, report.private_rows
    outputs = sorted((root / "out").rglob("*.dcm"))
    assert len(outputs) == 1
    before = pydicom.dcmread(root / "in" / "annex_e.dcm")
    after = pydicom.dcmread(outputs[0])
    audit = json.loads(next((root / "out" / "audit").glob("*.json")).read_text())
    return {"dates": request.param, "carried": carried, "before": before, "after": after,
            "audit": audit}


def _strings(value) -> list[str]:
    """Every text value inside a sequence's items (at any depth)."""
    out = []
    for item in value:
        for elem in item:
            out += _strings(elem.value) if elem.VR == "SQ" else [str(elem.value)]
    return out


def _valid_uid(text: str) -> bool:
    return len(text) <= 64 and all(p.isdigit() and (p == "0" or p[0] != "0")
                                   for p in text.split("."))


def _observed(before: Dataset, after: Dataset, tag: int) -> tuple[str, int | None]:
    """What the anonymized file shows of one attribute: removed, emptied, kept, remapped (a
    new valid UID), shifted (a date moved by whole days: the days) or replaced."""
    where_b, where_a = (before.file_meta, after.file_meta) if tag >> 16 == 2 else (before, after)
    if tag not in where_a:
        return "removed", None
    elem, original = where_a[tag], where_b[tag].value
    value = elem.value
    if elem.VR == "SQ":
        texts = _strings(value)
        if not value:
            return "emptied", None
        if any(LEAK in t or t in (UID_PLANTED, UID_OWN) for t in texts):
            return "kept", None
        return ("remapped" if texts and all(map(_valid_uid, texts)) else "replaced"), None
    if value in (None, "", b"") or (isinstance(value, list) and not value):
        return "emptied", None
    if value == original:
        return "kept", None
    if elem.VR == "UI":
        return ("remapped" if _valid_uid(str(value)) else "replaced"), None
    if elem.VR in ("DA", "DT") and len(str(value)) >= 8 and str(value)[:8].isdigit():
        days = (np.datetime64(f"{value[:4]}-{value[4:6]}-{value[6:8]}")
                - np.datetime64("2015-03-17")).astype(int)
        return "shifted", int(days)
    return "replaced", None


def _expected(tag: int, basic: str, dates: str, vr: str, modified_dates: bool) -> set[str]:
    """The outcomes the standard's row allows, with the option as spinepipe applies it."""
    if tag in DEVIATIONS:
        return {DEVIATIONS[tag][0]}
    if modified_dates and dates == "C" and vr in ("DA", "DT"):
        return {"shifted"}   # retained, moved by the patient's one shift
    # (a time (TM) under the option: spinepipe applies the basic action, which removes at
    # least as much as the option's modification would keep)
    allowed = set(BASIC[basic])
    if vr == "UI" and "replaced" in allowed:
        allowed.add("remapped")   # a dummy UID
    if not modified_dates and vr in ("DA", "DT") and "replaced" in allowed:
        allowed.add("shifted")    # a dummy date reads as a date, too
    return allowed


def _audited(audit: dict) -> set[str]:
    """Every keyword (or ``(GGGG,EEEE)``) the audit names an action for."""
    return {name for per in audit["counts"].values() for name in per}


def _mismatches(annex_e: dict, codes: set[str]) -> tuple[int, list[str]]:
    """How many attributes of the given Basic Profile actions the file carried, and those
    whose outcome the standard's row does not allow."""
    checked, wrong = 0, []
    for tag, (name, basic, dates) in annex_e["carried"].items():
        if basic not in codes:
            continue
        checked += 1
        vr = dictionary_VR(tag).split(" or ")[0]
        got, _ = _observed(annex_e["before"], annex_e["after"], tag)
        allowed = _expected(tag, basic, dates, vr, annex_e["dates"])
        if got not in allowed:
            wrong.append(f"{_tag_text(tag)} {name} [{basic}{dates and '/' + dates}]: {got}, "
                         f"expected {sorted(allowed)}")
    return checked, wrong


def test_the_annex_e_copy_is_the_standards_table():
    """The checked-in rows are PS3.15 2026c's, as the standard writes them (not the product's
    table): a few rows read off the standard by hand, and the size of each category."""
    rows = {tag: (basic, dates) for tag, _, basic, dates in _annex_e_rows()}
    counts = {code: sum(b == code for b, _ in rows.values()) for code in BASIC}
    assert counts == {"D": 93, "Z": 42, "X": 415, "U": 55, "X/Z": 11, "X/D": 23, "Z/D": 6,
                      "X/Z/D": 8, "X/Z/U*": 2}
    assert rows["(0010,0010)"] == ("Z", "") and rows["(0010,0020)"] == ("Z/D", "")
    assert rows["(0012,0040)"] == ("D", "") and rows["(0008,0018)"] == ("U", "")
    assert rows["(0008,0020)"] == ("Z", "C") and rows["(0010,1000)"] == ("X", "")
    assert rows["(0008,1140)"] == ("X/Z/U*", "") and rows["(60xx,4000)"] == ("X", "")
    # each reviewed deviation names a row of the standard that asks for something else
    for tag, (outcome, _) in DEVIATIONS.items():
        basic, dates = rows[_tag_text(tag)]
        assert outcome not in BASIC[basic] or dates, hex(tag)


def test_every_annex_e_D_attribute_is_replaced(annex_e):
    """D (PS3.15 Table E.1-1, 2026c): present with a dummy / pseudonym value, never the
    original, never removed (a Type 1 attribute must stay); dates moved with the option."""
    checked, wrong = _mismatches(annex_e, {"D"})
    assert checked >= 85, checked   # the table's 93 D rows that pydicom knows
    assert wrong == [], "\n".join(wrong)


def test_every_annex_e_Z_attribute_is_emptied_or_dummied(annex_e):
    checked, wrong = _mismatches(annex_e, {"Z"})
    assert checked >= 40, checked
    assert wrong == [], "\n".join(wrong)


def test_every_annex_e_X_attribute_is_removed(annex_e):
    checked, wrong = _mismatches(annex_e, {"X"})
    assert checked >= 385, checked
    assert wrong == [], "\n".join(wrong)


def test_every_annex_e_U_attribute_is_remapped_consistently(annex_e):
    """U: a new valid UID; one input UID gives one output UID in every attribute and item
    (references between objects stay consistent), the object's own UID another one."""
    checked, wrong = _mismatches(annex_e, {"U"})
    assert checked >= 50, checked
    assert wrong == [], "\n".join(wrong)
    after = annex_e["after"]
    planted = {str(after[t].value) for t, (_, basic, _) in annex_e["carried"].items()
               if basic == "U" and t >> 16 != 2 and t != 0x00080018}
    assert len(planted) == 1, planted
    own = str(after.SOPInstanceUID)
    assert own not in planted and after.file_meta.MediaStorageSOPInstanceUID == own
    referenced = after.ReferencedImageSequence[0].ReferencedSOPInstanceUID   # X/Z/U*
    assert referenced in planted


def test_every_annex_e_compound_attribute_takes_one_of_its_choices(annex_e):
    checked, wrong = _mismatches(annex_e, {"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
    assert checked >= 45, checked
    assert wrong == [], "\n".join(wrong)


def test_annex_e_dates_move_by_one_shift_with_the_modified_dates_option(annex_e):
    """With the option, every date of the table is retained moved by the patient's one shift
    (intervals kept); without it none is (dummies or removal, checked above); the method codes
    say which; the audit names every attribute the file carried."""
    shifts = {}
    for tag, (name, basic, dates) in annex_e["carried"].items():
        got, days = _observed(annex_e["before"], annex_e["after"], tag)
        if got == "shifted" and tag not in DEVIATIONS and dates == "C":
            shifts[name] = days
    after = annex_e["after"]
    codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
    assert after.PatientIdentityRemoved == "YES" and codes[0] == "113100"
    assert ("113107" in codes) is annex_e["dates"]
    if annex_e["dates"]:
        assert len(shifts) >= 100, len(shifts)
        assert len(set(shifts.values())) == 1 and 0 not in shifts.values(), shifts
    audited = _audited(annex_e["audit"])
    missing = [name for tag, (name, _, _) in annex_e["carried"].items()
               if tag >> 16 != 2 and (keyword_for_tag(tag) or _tag_text(tag)) not in audited]
    assert missing == []


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
    proc = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
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



def test_a_source_switched_off_loses_its_outputs_and_the_other_keeps_its_own(tmp_path,
                                                                             small_phantom):
    """The phantom turned off leaves its folder empty: its outputs go, said by folder and
    count; the PACS folder's outputs stay (an emptied folder was not pruned before: the
    demo's images stayed beside the real batch)."""
    phantom, pacs = tmp_path / "dicom", tmp_path / "pacs"
    files = sorted(small_phantom.joinpath("dicom").rglob("*.dcm"))
    phantom.mkdir()
    pacs.mkdir()
    for p in files[:4]:
        shutil.copy(p, phantom / p.name)
    for p in files[4:]:
        shutil.copy(p, pacs / p.name)
    params = tmp_path / "params.yaml"
    params.write_text("anonymize:\n  ocr: false\n")
    args = [SPINEPIPE, "anonymize", "--input", str(phantom), "--input", str(pacs), "--output",
            str(tmp_path / "out"), "--private", str(tmp_path / "private"), "--params",
            str(params), "--quiet", "--workers", "1"]
    assert subprocess.run(args, capture_output=True, text=True, timeout=120).returncode == 0
    audit = sorted((tmp_path / "out" / "audit").glob("*.json"))
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(files) == len(audit)
    for p in phantom.iterdir():
        p.unlink()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"anonymize: removed 4 output(s) whose input is gone from {phantom}" in proc.stderr
    kept = {p.stem for p in (tmp_path / "out").rglob("*.dcm")}
    assert len(kept) == len(files) - 4
    assert {p.stem for p in (tmp_path / "out" / "audit").glob("*.json")} == kept
    # the PACS switched off (its state beside its folder): its files stay, its outputs go
    (tmp_path / "pacs.state.json").write_text('{"enabled": false}')
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"anonymize: left out {pacs}: its source is switched off" in proc.stderr
    assert f"removed {len(files) - 4} output(s) whose input is gone from {pacs}" in proc.stderr
    assert not list((tmp_path / "out").rglob("*.dcm")) and len(list(pacs.iterdir())) == 2
    (tmp_path / "pacs.state.json").write_text('{"enabled": true}')  # on again: back
    assert subprocess.run(args, capture_output=True, text=True, timeout=120).returncode == 0
    assert {p.stem for p in (tmp_path / "out").rglob("*.dcm")} == kept
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


def test_a_duplicate_is_retried_and_takes_over_when_the_first_copy_goes(tmp_path):
    """A skipped duplicate is never cached as final: once the first copy is gone, the next
    run anonymizes the second (other skips, a non-image say, are reused)."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    _image().save_as(src / "a" / "x.dcm", enforce_file_format=True)
    _image().save_as(src / "b" / "x.dcm", enforce_file_format=True)
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    rows = anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig()).private_rows
    assert rows["b/x.dcm"]["duplicate_of"] == "a/x.dcm" and "reused" not in rows["b/x.dcm"]
    rows = anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig()).private_rows
    assert rows["a/x.dcm"]["reused"] and "reused" not in rows["b/x.dcm"]   # retried
    (src / "a" / "x.dcm").unlink()
    rows = anonymize_tree(src, tmp_path / "out", priv, salt, AnonymizeConfig()).private_rows
    assert rows["b/x.dcm"]["status"] == "anonymized"
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1


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


def test_compiled_code_meanings_are_pydicoms_and_a_stale_table_is_ignored(tmp_path, monkeypatch):
    """``make`` compiles pydicom's concept dictionary for anonymize's code meanings: the same
    value -> meaning for every scheme; a table of another pydicom version, a damaged one or
    none at all are ignored and the dictionary itself is read."""
    import marshal

    import pydicom
    from pydicom.sr._concepts_dict import concepts

    from converters.dicom import deid_table as dt

    path = dt.write_code_table(tmp_path / "codes.marshal")
    monkeypatch.setattr(dt, "code_table_file", lambda: path)
    dt._compiled_codes.cache_clear()
    compiled = dt._compiled_codes()
    assert compiled is not None and set(compiled) == set(concepts)
    for scheme, entries in concepts.items():
        expected = {}
        for by_value in entries.values():
            for value, (meaning, _) in by_value.items():
                expected.setdefault(value, meaning)
        assert compiled[scheme] == expected, scheme
    assert compiled["SCT"]["122496007"] == "Lumbar spine"   # as the phantom writes it
    stale = {"pydicom": "0.0", "codes": {"SCT": {"122496007": "forged"}}}
    for damaged in (marshal.dumps(stale), b"\x00not marshal", marshal.dumps([1, 2])):
        path.write_bytes(damaged)
        dt._compiled_codes.cache_clear()
        dt.standard_codes.cache_clear()
        assert dt._compiled_codes() is None
        assert dt.standard_codes("SCT")["122496007"] == "Lumbar spine"
    assert pydicom.__version__ != "0.0"
    dt._compiled_codes.cache_clear()
    dt.standard_codes.cache_clear()


def test_the_last_object_written_is_held_until_the_next_read_and_let_go_at_the_end(
        tmp_path, small_phantom, monkeypatch):
    """An object written anonymized is freed only after the next read (the allocator reuses
    its memory); never one holding more than HOLD_AT_MOST bytes of pixels in memory, never one
    that failed (still identifying: it is let go at once, and so is the one held before), and
    nothing is held once the tree is done (no object outlives the command)."""
    from converters.dicom import anonymize as anon
    priv = prepare_private(tmp_path / "private")
    salt = load_or_create_salt(priv)
    src = sorted((small_phantom / "dicom").rglob("*.dcm"))[0]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    job = (str(src), "dicom/a.dcm", str(tmp_path / "one"), salt, AnonymizeConfig())
    with output_root(tmp_path / "one"):
        assert anon._anonymize_file(job)[1].status == "anonymized"
        held = anon._LAST_READ[0]
        assert len(anon._LAST_READ) == 1 and held.PatientID != pydicom.dcmread(src).PatientID
        failed = anon._anonymize_file((str(junk), "dicom/junk.dcm", *job[2:]))
        assert failed[1].status == "failed" and anon._LAST_READ == []
        assert anon._anonymize_file(job)[1].status == "anonymized" and anon._LAST_READ
        monkeypatch.setattr(anon, "HOLD_AT_MOST", len(held.PixelData) - 1)
        assert anon._anonymize_file(job)[1].status == "anonymized" and anon._LAST_READ == []
    ds = pydicom.dcmread(src)       # the pixels decoded (pydicom keeps the array) count too
    monkeypatch.setattr(anon, "HOLD_AT_MOST", len(ds.PixelData) + 10)
    anon._hold(ds)
    assert anon._LAST_READ == [ds]
    assert ds.pixel_array.nbytes > 10
    anon._hold(ds)
    assert anon._LAST_READ == []
    monkeypatch.undo()
    report = anonymize_tree(small_phantom / "dicom", tmp_path / "out", priv, salt,
                            AnonymizeConfig(), workers=1)
    assert report.failed == 0 and anon._LAST_READ == []
