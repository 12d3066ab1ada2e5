"""De-identification guarantees, stated by hand (issue 30, mutation modules ``deid-table`` and
``deid-engine``): the action table is refused when malformed, and each special row applies to
its own class of tags; a kept value survives only when its check allows it; a UID is remapped
consistently, never to itself, the same in every version, a well-known one never; dates move
by the patient's one shift; private tags go unless allowlisted; nested sequences are walked,
whatever VR they were written with; code meanings come from the dictionary; the file meta is
rebuilt; the audit counts every element and lists every change with its path (text markers
removed from compressed pixels included); a burned-in flag quarantines as its mode says; every
error names the file it is given and no other; the outcome names no UID the object does not
carry. Guards against regressions of the table's reader and of the engine that applies it
(converters/dicom/deid_table.py, deid_engine.py)."""
from __future__ import annotations

import copy
import datetime as dt
import re
import struct
from io import BytesIO

import cv2
import numpy as np
import pytest
from conftest import dicom_image
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from converters.core.errors import InvalidConfigError, InvalidDicomError, UnsupportedDicomError
from converters.dicom import deid_engine as en
from converters.dicom import ledger
from converters.dicom import deid_table as tb
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.deid_engine import anonymize_dataset
from converters.dicom.burned_in import find_burned_in_text

SALT = b"\x05" * 32
NO_OCR = AnonymizeConfig(ocr=False)
HEADER = "# test table, version t-1\ntag\tkeyword\taction\tcheck\toptions\tsource\n"
SPECIAL = "(50xx,xxxx)\t-\tX\n(60xx,xxxx)\t-\tX\n(gggg,0000)\t-\tX\n(odd group)\t-\tX\n*\t-\tX\n"
OWN_UID = "1.2.826.0.1.3680043.10.511.99"


@pytest.fixture(autouse=True)
def _no_cached_results():
    """Each test computes the table's reading, the options' effect, the checks and the code
    dictionary afresh (mutation testing forks test processes that would reuse the parent's)."""
    for cached in (tb.action_table, tb.effective_rules, tb.value_check, tb.dictionary_vr,
                   tb._max_length, tb.standard_codes):
        cached.cache_clear()


def _image(**extra) -> Dataset:
    return dicom_image(4, **{"PatientID": "P-42", "PatientName": "ROE^RICHARD", **extra})


def _run(ds: Dataset, options: AnonymizeConfig = NO_OCR):
    out = anonymize_dataset(ds, SALT, options)
    assert out.status == "anonymized", out.reason
    return out


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _table(tmp_path, rows: str, special: str = SPECIAL, header: str = HEADER):
    path = tmp_path / "table.tsv"
    path.write_text(header + rows + special, encoding="utf-8")
    return tb.action_table(path)


# ---- the table's reader


def test_a_well_formed_table_is_read_row_by_row(tmp_path):
    table = _table(tmp_path, "(0010,0040)\tPatientSex\tZ\tlist:M|F\tpatient_characteristics=K,"
                             "device_identity=X\n(0028,0010)\tRows\tK\n")
    assert table.version == "t-1"
    assert table.rows[0x00100040] == tb.Rule("Z", "list:M|F", (
        ("patient_characteristics", "K"), ("device_identity", "X")))
    assert table.rows[0x00280010] == tb.Rule("K", "", ())   # a short row: no check, no options
    assert set(table.special) == {"curves", "overlays", "group_length", "private", "default"}


@pytest.mark.parametrize("rows, special, header, message, line", [
    ("(0010,0040)\tPatientSex\tZ\t\tretain_all=K\n", SPECIAL, HEADER, "unknown option", 3),
    ("(0010,0040)\tPatientSex\tZ\t\tpatient_characteristics=W\n", SPECIAL, HEADER,
     "unknown option", 3),
    ("(0010,0040)\tPatientSex\tW\n", SPECIAL, HEADER, "unknown action", 3),
    ("(0010,0040)\tPatientSex\tK\tnumeric\n", SPECIAL, HEADER, "unknown value check", None),
    ("(0010,004G)\tPatientSex\tX\n", SPECIAL, HEADER, "malformed tag", 3),
    ("(0010,0040)\tPatientSex\tK\n", SPECIAL, HEADER, "without a value check", 3),
    ("(0010,0040)\tPatientSex\tZ\t\tpatient_characteristics=K\n", SPECIAL, HEADER,
     "without a value check", 3),
    ("(0028,0010)\tRows\tK\n", SPECIAL.replace("*\t-\tX\n", ""), HEADER, "default row", 0),
    ("(0028,0010)\tRows\tK\n", SPECIAL, HEADER.replace(", version t-1", ""), "version", 0),
])
def test_a_malformed_table_is_refused_naming_the_line(tmp_path, rows, special, header, message,
                                                      line):
    with pytest.raises(InvalidConfigError, match=message) as err:
        _table(tmp_path, rows, special, header)
    if message == "malformed tag":
        assert "'(0010,004G)'" in str(err.value)
    if line is not None:   # the row's line, or the file itself for what the whole table lacks
        assert err.value.file == str(tmp_path / "table.tsv") + (f" line {line}" if line else "")


def test_only_text_attributes_need_a_value_check(tmp_path):
    table = _table(tmp_path, "(0028,0010)\tRows\tK\n(0002,0010)\tTransferSyntaxUID\tK\n"
                             "(0010,0040)\tPatientSex\tX\t\tdevice_identity=Z\n")
    assert table.rows[0x00020010].action == "K"      # file meta: set or checked by spinepipe
    assert table.rows[0x00100040].options == (("device_identity", "Z"),)


def test_options_switch_the_rows_they_name():
    plain = tb.table_actions(AnonymizeConfig())
    assert plain[0x00100040] == ("Z", "list:M|F|O") and plain[0x00181000][0] == "Z"
    assert plain[0x00080020][0] == "S"
    assert tb.table_actions(AnonymizeConfig(retain_patient_characteristics=True))[
        0x00100040] == ("K", "list:M|F|O")
    assert tb.table_actions(AnonymizeConfig(retain_device_identity=True))[0x00181000][0] == "K"
    assert tb.table_actions(AnonymizeConfig(retain_longitudinal_modified_dates=False))[
        0x00080020][0] == "Z"


# ---- small pieces, hand-computed


def test_dates_shift_by_calendar_days():
    assert ledger.shift_da("20200301", -1) == "20200229"
    assert ledger.shift_da(" 20200301 ", 366) == "20210302"
    assert ledger.shift_da("2020030112", 0) == "20200301"
    assert ledger.shift_da("2020-03-01", 1) == "" and ledger.shift_da("", 1) == ""
    assert ledger.shift_dt("20200301120000.5+0100", -1) == "20200229120000.5+0100"
    assert ledger.shift_dt("20200301", -1) == "20200229"
    assert ledger.shift_dt(" 20200301 ", -1) == "20200229"
    assert ledger.shift_dt("2020030", -1) == "" and ledger.shift_dt("2020", 5) == ""
    assert ledger.shift_dt("20200301T1200", 1) == "20200302"       # a non-DT tail is dropped
    assert ledger.shift_dt("20201301120000", 1) == ""              # an impossible date: emptied


def test_uids_remap_deterministically_never_to_themselves():
    a, b = ledger.remap_uid(SALT, OWN_UID), ledger.remap_uid(SALT, OWN_UID + "1")
    assert a == ledger.remap_uid(SALT, OWN_UID) and a != b and a != OWN_UID
    assert a != ledger.remap_uid(b"\x06" * 32, OWN_UID)
    for uid in (a, b):
        assert uid.startswith("2.25.") and len(uid) <= 64
        assert 0 < int(uid[5:]) < 2 ** 128 and str(int(uid[5:])) == uid[5:]
    assert len({ledger.remap_uid(SALT, f"1.2.{i}") for i in range(50)}) == 50


def test_text_values_split_and_strip():
    assert en._text_values(DataElement(0x00080008, "CS", None)) == []
    assert en._text_values(_raw(0x00080008, "CS", b"ORIGINAL\\PRIMARY ")) == ["ORIGINAL",
                                                                             "PRIMARY"]
    assert en._text_values(_raw(0x00080016, "UI", b"1.2\0")) == ["1.2"]
    assert en._text_values(DataElement(0x00080008, "CS", ["A ", "B"])) == ["A", "B"]
    assert en._text_values(DataElement(0x00180015, "CS", "SPINE")) == ["SPINE"]
    assert en._text_values(DataElement(0x00180015, "CS", "")) == []
    assert en._text_values(_raw(0x00180015, "CS", b"  ")) == []
    assert isinstance(DataElement(0x00080008, "CS", ["A", "B"]).value, MultiValue)


def test_empty_values_and_names():
    assert isinstance(tb.empty_value("SQ"), Sequence) and len(tb.empty_value("SQ")) == 0
    assert tb.empty_value("LO") == "" and tb.empty_value("UI") == ""
    assert tb.empty_value("US") is None and tb.empty_value("OB") is None
    assert en._name(Tag(0x00100010)) == "PatientName"
    assert en._name(Tag(0x0011ABCD)) == "(0011,ABCD)"


def test_vr_and_length_checks():
    assert tb.vr_fits("US", 0x00280010) and tb.vr_fits(None, 0x00280010)
    assert tb.vr_fits("UN", 0x00280010) and not tb.vr_fits("LO", 0x00280010)
    assert tb.vr_fits("SS", 0x00280106) and tb.vr_fits("US", 0x00280106)  # "US or SS"
    assert not tb.vr_fits("OB", 0x00280106)
    assert tb.length_fits(_raw(0x00280010, "US", b"\x04\x00"), 0x00280010)
    assert not tb.length_fits(_raw(0x00280010, "US", b"\x04\x00\x04\x00"), 0x00280010)
    assert tb.length_fits(DataElement(0x00280010, "US", 4), 0x00280010)
    assert tb.length_fits(_raw(0x00280030, "DS", b"1\\1" * 20), 0x00280030)  # text: unbounded
    # LUT Descriptor: "US or SS", VM 3: three 2-byte values and no more
    assert tb.length_fits(_raw(0x00283002, "US", b"\x00\x01" * 3), 0x00283002)
    assert not tb.length_fits(_raw(0x00283002, "US", b"\x00\x01" * 4), 0x00283002)
    assert tb.length_fits(_raw(0x00283002, "SS", b"\x00\x01" * 3), 0x00283002)
    assert tb.dictionary_vr(0x00091001) == "UN" and tb._max_length(0x00091001) is None


def test_value_checks():
    charset = tb.value_check("charset")
    assert charset("") and charset("ISO_IR 100") and not charset("ISO_IR 999")
    assert tb.value_check("") is None and tb.value_check("registry") is None
    assert tb.value_check("list:M|F")("F") and not tb.value_check("list:M|F")("X")
    with pytest.raises(InvalidConfigError, match="unknown value check 'numeric'") as err:
        tb.value_check("numeric")
    assert err.value.file == str(tb.TABLE_FILE)


# ---- the engine


def test_a_kept_value_survives_only_when_its_check_allows(capsys):
    ds = _image(BodyPartExamined="SPINE", ViewPosition="DOE^JOHN", WindowCenter="40",
                ImageType=["ORIGINAL", "JOHN DOE", "PRIMARY"], PatientOrientation="MRN1")
    ds[0x00281051] = _raw(0x00281051, "DS", b"80\\wide")   # Window Width: one bad number
    out = _run(ds)
    assert ds.BodyPartExamined == "SPINE" and ds.WindowCenter == 40
    assert ds.ViewPosition == "" and ds.PatientOrientation == ""
    assert list(ds.ImageType) == ["ORIGINAL", "", "PRIMARY"]   # a list keeps its good values
    assert ds[0x00281051].value in ("", None)                   # a number check keeps all or none
    assert out.audit["counts"]["V"] == {"ViewPosition": 1, "ImageType": 1,
                                        "PatientOrientation": 1, "WindowWidth": 1}
    assert out.audit["counts"]["K"]["BodyPartExamined"] == 1


def test_patient_characteristics_are_kept_checked_only_with_their_option():
    plain = _image(PatientSex="F", PatientAge="045Y")
    _run(plain)
    assert plain.PatientSex == "" and "PatientAge" not in plain
    kept = _image(PatientSex="F", PatientAge="45 years")
    out = _run(kept, AnonymizeConfig(ocr=False, retain_patient_characteristics=True))
    assert kept.PatientSex == "F" and kept.PatientAge == ""
    assert out.audit["counts"]["V"] == {"PatientAge": 1}


def test_class_uids_kept_only_when_well_known():
    ct = "1.2.840.10008.5.1.4.1.1.2"
    ds = _image(SOPClassUID=ct, ReferencedSOPClassUID=OWN_UID)
    _run(ds)
    assert ds.SOPClassUID == ct
    assert ds.file_meta.MediaStorageSOPClassUID == ct
    odd = _image(SOPClassUID=OWN_UID)
    out = _run(odd)
    assert odd.SOPClassUID == ledger.remap_uid(SALT, OWN_UID)
    assert out.audit["counts"]["U"]["SOPClassUID"] == 1


def test_uids_remapped_consistently_at_every_depth():
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ref.ReferencedSOPInstanceUID = OWN_UID
    ds = _image(SOPInstanceUID=OWN_UID, ReferencedImageSequence=Sequence([ref]),
                FailedSOPInstanceUIDList=[OWN_UID, OWN_UID + ".2"], IrradiationEventUID="")
    out = _run(ds)
    new = ledger.remap_uid(SALT, OWN_UID)
    assert ds.SOPInstanceUID == new == out.new_sop_uid != OWN_UID
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new
    assert list(ds.FailedSOPInstanceUIDList) == [new, ledger.remap_uid(SALT, OWN_UID + ".2")]
    assert ds.IrradiationEventUID == ""
    assert ds.file_meta.MediaStorageSOPInstanceUID == new
    assert {"tag": "(0008,1155)", "keyword": "ReferencedSOPInstanceUID", "action": "U",
            "path": "ReferencedImageSequence[0].ReferencedSOPInstanceUID"} in out.audit["changes"]


def test_dates_move_by_the_patients_one_shift():
    ds = _image(StudyDate="20200301", ContentDate="", AcquisitionDateTime="20200301101010",
                CalibrationDate=["20190101", "20190202"], PatientBirthDate="19700101")
    out = _run(ds)
    days = out.date_shift_days
    assert -3650 <= days <= -365

    def moved(text):
        return (dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
                + dt.timedelta(days=days)).strftime("%Y%m%d")
    assert ds.StudyDate == moved("20200301") and ds.ContentDate == ""
    assert ds.AcquisitionDateTime == moved("20200301") + "101010"
    assert list(ds.CalibrationDate) == [moved("20190101"), moved("20190202")]
    assert ds.PatientBirthDate == ""
    assert out.ledger["date_shift_days"] == days
    plain = _image(StudyDate="20200301")
    out = _run(plain, AnonymizeConfig(ocr=False, retain_longitudinal_modified_dates=False))
    assert plain.StudyDate == "" and out.date_shift_days == 0


def test_pseudonym_everywhere_and_dummies_by_vr():
    item = Dataset()
    item.PatientID = "P-42"
    item.PatientName = "ROE^RICHARD"
    item.ReferencedSOPInstanceUID = OWN_UID
    ds = _image(ContentCreatorName="ROE^RICHARD", AnnotationGroupUID=OWN_UID,
                ReferencedImageSequence=Sequence([item]), AccessionNumber="ACC1",
                StudyTime="101010")
    out = _run(ds)
    p = out.patient_pseudonym
    assert p and ds.PatientID == ds.PatientName == p
    assert ds.ReferencedImageSequence[0].PatientID == p
    assert ds.ReferencedImageSequence[0].PatientName == p
    assert ds.ContentCreatorName == ""                     # Z/D of a PN: emptied
    assert ds.AnnotationGroupUID == ledger.remap_uid(SALT, OWN_UID)  # D of a UI: remapped
    assert ds.AccessionNumber == "" and ds.StudyTime == ""
    assert out.audit["counts"]["P"] == {"PatientID": 2, "PatientName": 2}


def test_dummy_values_replace_the_input():
    ds = _image(VerifyingObserverName="ROE^RICHARD", VerifyingOrganization="ACME",
                VerificationDateTime="20200101101010")
    out = _run(ds)
    assert ds.VerifyingObserverName == "ANONYMIZED" and ds.VerifyingOrganization == "ANONYMIZED"
    assert out.audit["counts"]["D"]["VerifyingObserverName"] == 1


def test_sequences_emptied_removed_or_walked_and_counted():
    inner = Dataset()
    inner.PatientName = "ROE^RICHARD"
    inner.PatientAddress = "1 ELM ST"
    study = Dataset()
    study.ReferencedSOPInstanceUID = OWN_UID
    study.ReferencedImageSequence = Sequence([inner])
    empty_item = Dataset()
    empty_item.PatientAddress = "1 ELM ST"                   # removed: the item is left empty
    content = Dataset()
    content.TextValue = "ROE"
    ds = _image(ReferencedStudySequence=Sequence([study]), VerifyingObserverSequence=Sequence(
        [content]), SourceImageSequence=Sequence([empty_item, Dataset(), copy.deepcopy(study)]),
        OtherPatientIDsSequence=Sequence([copy.deepcopy(inner)]))
    out = _run(ds)
    assert len(ds.ReferencedStudySequence) == 0            # Z: emptied
    assert len(ds.VerifyingObserverSequence) == 0          # D of a sequence: emptied
    assert "OtherPatientIDsSequence" not in ds             # X: removed
    assert len(ds.SourceImageSequence) == 1                # Q: empty items dropped
    walked = ds.SourceImageSequence[0]
    assert "PatientAddress" not in walked.ReferencedImageSequence[0]
    counts = out.audit["counts"]
    # Referenced Study (UID, ReferencedImageSequence, PatientName, PatientAddress),
    # Verifying Observer (TextValue), Other Patient IDs (PatientName, PatientAddress)
    assert counts["X"]["ReferencedSOPInstanceUID"] == 1
    assert counts["X"]["PatientName"] == 2 and counts["X"]["TextValue"] == 1
    assert counts["X"]["PatientAddress"] == 4             # 2 counted + 2 removed while walked
    assert counts["X"]["ReferencedImageSequence"] == 1
    assert counts["Z"] == {"ReferencedStudySequence": 1, "VerifyingObserverSequence": 1}
    # an emptied or removed sequence is one change; what it held is counted, not listed;
    # a path names the item of the input
    assert [c["path"] for c in out.audit["changes"] if c["keyword"] == "TextValue"] == []
    assert [c["path"] for c in out.audit["changes"] if c["keyword"] == "PatientAddress"] == [
        "SourceImageSequence[0].PatientAddress",
        "SourceImageSequence[2].ReferencedImageSequence[0].PatientAddress"]  # input index


def test_code_meanings_come_from_the_dictionary():
    std, local = Dataset(), Dataset()
    std.CodeValue, std.CodingSchemeDesignator, std.CodeMeaning = "122494005", "SCT", "DOE^JOHN"
    std.CodingSchemeVersion = "X1"
    local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning = "L5", "99LOCAL", "ROE"
    ds = _image(AnatomicRegionSequence=Sequence([std]), ViewCodeSequence=Sequence([local]))
    out = _run(ds)
    item = ds.AnatomicRegionSequence[0]
    assert (item.CodeValue, item.CodingSchemeDesignator) == ("122494005", "SCT")
    assert item.CodeMeaning == tb.standard_codes("SCT")["122494005"] != "DOE^JOHN"
    assert "CodingSchemeVersion" not in item
    assert "ViewCodeSequence" not in ds or len(ds.ViewCodeSequence) == 0
    assert out.audit["counts"]["C"] == {"CodeMeaning": 1}
    assert out.audit["counts"]["X"]["CodeMeaning"] == 1
    assert {"tag": "(0008,0100)", "keyword": "CodeValue", "action": "X",
            "path": "ViewCodeSequence[0].CodeValue"} in out.audit["changes"]


def test_private_tags_go_unless_allowlisted():
    def planted():
        ds = _image()
        block = ds.private_block(0x0011, "ACME", create=True)
        block.add_new(0x01, "LO", "ROE^RICHARD")
        block.add_new(0x02, "DS", "1.5")
        other = ds.private_block(0x0013, "ACME", create=True)
        other.add_new(0x02, "DS", "2.5")
        item = Dataset()
        item.ReferencedSOPInstanceUID = OWN_UID
        item.private_block(0x0011, "ACME", create=True).add_new(0x02, "DS", "3.5")
        ds.SourceImageSequence = Sequence([item])
        return ds
    ds = planted()
    _run(ds)
    assert not [e for e in ds if e.tag.is_private]
    assert not [e for e in ds.SourceImageSequence[0] if e.tag.is_private]
    kept = planted()
    out = _run(kept, AnonymizeConfig(ocr=False, private_allowlist=["0011, ACME ,02"]))
    assert kept[0x00111002].value == "1.5" and kept[0x00110010].value == "ACME"
    assert kept.SourceImageSequence[0][0x00111002].value == "3.5"
    assert 0x00111001 not in kept and 0x00131002 not in kept and 0x00130010 not in kept
    assert out.audit["counts"]["K"]["(0011,1002)"] == 2


def test_curves_overlays_group_lengths_and_unknown_tags_go():
    ds = _image()
    ds.add_new(0x50000010, "US", 3)
    ds.add_new(0x60003000, "OW", b"\x00\x01")
    ds.add_new(0x00080000, "UL", 10)
    ds[0x00089999] = _raw(0x00089999, "LO", b"ROE ")   # public but in no dictionary
    ds[0x00020016] = _raw(0x00020016, "AE", b"SRC ")   # file meta in the data set
    ds[0x00281050] = _raw(0x00281050, "LO", b"ROE ")   # Window Center with a VR not its own
    ds[0x00181404] = _raw(0x00181404, "US", b"\x02\x00")   # Exposures on Plate: kept
    out = _run(ds)
    for tag in (0x50000010, 0x60003000, 0x00080000, 0x00089999, 0x00020016, 0x00281050):
        assert tag not in ds
    assert ds.Rows == 4 and ds.ExposuresOnPlate == 2
    assert out.audit["counts"]["X"]["(0008,9999)"] == 1


def test_too_long_numbers_and_nested_pixels_are_removed():
    item = Dataset()
    item.ReferencedSOPInstanceUID = OWN_UID
    item.PixelData = b"ROE^RICHARD!"
    ds = _image(SourceImageSequence=Sequence([item]))
    ds[0x00181404] = _raw(0x00181404, "US", b"ROE^RICHARD!")   # Exposures on Plate: 6 values
    out = _run(ds)
    assert 0x00181404 not in ds and "PixelData" not in ds.SourceImageSequence[0]
    assert "PixelData" in ds and out.audit["counts"]["R"] == {"PixelData": 1}


def test_spinepipe_sets_its_own_fields_and_the_file_meta():
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "1", "99X", "ROE"
    ds = _image(PatientIdentityRemoved="NO", DeidentificationMethod="ROE",
                DeidentificationMethodCodeSequence=Sequence([code]))
    ds.file_meta.SourceApplicationEntityTitle = "ROE"
    ds.file_meta.ImplementationVersionName = "ROE"
    assert "FileMetaInformationVersion" not in ds.file_meta   # added by spinepipe
    out = _run(ds)
    assert ds.PatientIdentityRemoved == "YES" and "ROE" not in str(ds.DeidentificationMethod)
    assert "99X" not in [c.CodingSchemeDesignator for c in ds.DeidentificationMethodCodeSequence]
    meta = ds.file_meta
    assert "SourceApplicationEntityTitle" not in meta
    assert meta.ImplementationVersionName == en.IMPLEMENTATION_VERSION_NAME
    assert meta.ImplementationClassUID == en.IMPLEMENTATION_CLASS_UID
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert {"tag": "(0002,0016)", "keyword": "SourceApplicationEntityTitle", "action": "X",
            "path": "file_meta.SourceApplicationEntityTitle"} in out.audit["changes"]
    assert out.audit["counts"]["N"]["PatientIdentityRemoved"] == 1
    assert out.audit["counts"]["K"]["TransferSyntaxUID"] == 1


def test_the_audit_counts_every_element_and_lists_every_change():
    item = Dataset()
    item.ReferencedSOPInstanceUID = OWN_UID
    item.PatientAddress = "1 ELM ST"
    ds = _image(PatientAddress="1 ELM ST", SourceImageSequence=Sequence([item]))
    elements = len(ds) + len(item) + len(ds.file_meta)
    out = _run(ds)
    counts = out.audit["counts"]
    assert sum(n for per in counts.values() for n in per.values()) == elements
    changes = out.audit["changes"]
    assert all(c["action"] != "K" for c in changes)
    assert sum(1 for c in changes if c["keyword"] == "PatientAddress") == 2
    assert {"tag": "(0010,1040)", "keyword": "PatientAddress", "action": "X",
            "path": "SourceImageSequence[0].PatientAddress"} in changes
    assert {"tag": "(0008,0018)", "keyword": "SOPInstanceUID", "action": "U",
            "path": "SOPInstanceUID"} in changes
    assert not [c for c in changes if c["action"] in ("R", "K")]


def test_the_outcome_and_ledger_name_old_and_new_identifiers():
    ds = _image(StudyInstanceUID=OWN_UID + ".1", SeriesInstanceUID=OWN_UID + ".2",
                SOPInstanceUID=OWN_UID + ".3", AccessionNumber="ACC7", IssuerOfPatientID="HOSP")
    out = _run(ds)
    new_study = ledger.remap_uid(SALT, OWN_UID + ".1")
    assert out.new_study_uid == new_study == ds.StudyInstanceUID
    assert out.new_sop_uid == ledger.remap_uid(SALT, OWN_UID + ".3")
    row = out.ledger
    assert (row["patient_name"], row["accession_number"], row["patient_id"]) == (
        "ROE^RICHARD", "ACC7", "P-42")
    assert row["study_instance_uid"] == OWN_UID + ".1"
    assert row["sop_instance_uid"] == OWN_UID + ".3"
    assert row["new_study_instance_uid"] == new_study
    assert row["new_series_instance_uid"] == ledger.remap_uid(SALT, OWN_UID + ".2")
    assert row["new_sop_instance_uid"] == out.new_sop_uid
    assert row["pseudonym"] == out.patient_pseudonym == ds.PatientID
    assert row["date_shift_days"] == out.date_shift_days != 0
    assert row["issuer"] and row["patient_key"]
    again = _run(_image(StudyInstanceUID="1.2.3.4", SOPInstanceUID="1.2.3.5",
                        IssuerOfPatientID="HOSP"))
    assert again.patient_pseudonym == out.patient_pseudonym       # same patient, same key
    assert again.date_shift_days == out.date_shift_days


@pytest.mark.parametrize("flag", ["YES", "yes"])
def test_a_burned_in_flag_quarantines_or_blanks_the_configured_regions(flag):
    ds = _image(BurnedInAnnotation=flag)
    out = anonymize_dataset(ds, SALT, NO_OCR)
    assert out.status == "quarantined" and ds.PatientID == "P-42"
    out = anonymize_dataset(ds, SALT, AnonymizeConfig(ocr=False, burned_in="blank"))
    assert out.status == "quarantined" and "blank_regions" in out.reason
    out = _run(ds, AnonymizeConfig(ocr=False, burned_in="blank",
                                   blank_regions=[[0, 0, 2, 1], [0, 3, 1, 1]]))
    assert ds.BurnedInAnnotation == "NO" and ds.PatientID == out.patient_pseudonym
    assert ds.pixel_array.tolist() == [[0, 0, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                       [0, 13, 14, 15]]
    assert {"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "C", "path": "PixelData",
            "blanked": 2} in out.audit["changes"]
    assert "113101" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]


def test_an_allowlisted_private_element_at_offset_00_is_kept_an_orphan_is_not():
    ds = _image()
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x00, "DS", "1.5")
    block.add_new(0x01, "DS", "2.5")
    ds.add_new(0x00131005, "LO", "ROE^RICHARD")         # a private element without its creator
    out = _run(ds, AnonymizeConfig(ocr=False, private_allowlist=["0011,ACME,00",
                                                                 "0013,ACME,05"]))
    assert ds[0x00111000].value == "1.5" and 0x00111001 not in ds
    assert 0x00131005 not in ds
    assert out.audit["counts"]["X"]["(0013,1005)"] == 1


def test_a_date_longer_than_its_vr_is_shifted_and_cut_to_a_date():
    ds = _image()
    ds[0x00080020] = _raw(0x00080020, "DA", b"2020030112")   # Study Date: 10 characters
    out = _run(ds)
    assert ds.StudyDate == (dt.date(2020, 3, 1) + dt.timedelta(days=out.date_shift_days)
                            ).strftime("%Y%m%d")


def _referenced() -> Dataset:
    item = Dataset()
    item.ReferencedSOPInstanceUID = OWN_UID
    return item


def test_every_change_names_its_path():
    ds = _image(AnnotationGroupUID=OWN_UID, VerifyingObserverName="ROE^RICHARD",
                VerifyingObserverSequence=Sequence([Dataset()]), PatientIdentityRemoved="NO",
                ContentCreatorName="ROE", StudyDate="20200301",
                SourceImageSequence=Sequence([_referenced()]))
    changes = _run(ds).audit["changes"]
    for keyword, action in (("AnnotationGroupUID", "U"), ("VerifyingObserverName", "D"),
                            ("VerifyingObserverSequence", "Z"), ("PatientIdentityRemoved", "N"),
                            ("ContentCreatorName", "Z"), ("PatientName", "P"),
                            ("StudyInstanceUID", "U"), ("StudyDate", "S"),
                            ("SourceImageSequence", "Q")):
        assert [c["path"] for c in changes if c["keyword"] == keyword] == [keyword]
        assert [c["action"] for c in changes if c["keyword"] == keyword] == [action]


def _reread(ds: Dataset) -> Dataset:
    """``ds`` written as implicit VR little endian and read back: its elements raw, VR unknown."""
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    buf = BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


def test_an_emptied_sequence_counts_its_items_however_it_was_written():
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = OWN_UID
    ds = _reread(_image(ReferencedStudySequence=Sequence([ref])))
    assert ds.get_item(0x00081110).VR is None            # raw, read without its VR
    out = _run(ds)
    assert len(ds.ReferencedStudySequence) == 0
    assert out.audit["counts"]["X"]["ReferencedSOPInstanceUID"] == 1
    odd = _image(AccessionNumber="A")                    # a text attribute holding a sequence
    del odd.AccessionNumber
    odd.add(DataElement(0x00080050, "SQ", Sequence([copy.deepcopy(ref)])))
    out = _run(odd)
    assert odd["AccessionNumber"].VR == "SQ" and len(odd["AccessionNumber"].value) == 0
    assert out.audit["counts"]["X"]["ReferencedSOPInstanceUID"] == 1


def _with_text(frames: int = 1, **extra) -> tuple[Dataset, np.ndarray]:
    """A 512x512 image with a name and number burned into a dark band (frame ``frames``)."""
    img = (np.arange(512, dtype=np.uint16)[None, :] * 4 + 200).repeat(512, axis=0)
    img[420:470, 14:480] = 0
    cv2.putText(img, "DOE^JOHN 12345", (20, 460), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 4000, 3,
                cv2.LINE_AA)
    ds = _image(**extra)
    ds.Rows = ds.Columns = 512
    pixels = img if frames == 1 else np.stack([img * 0 + 200] * (frames - 1) + [img])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds, img


def test_burned_in_text_found_by_ocr_quarantines_or_is_blanked():
    ds, img = _with_text(BurnedInAnnotation="NO")          # the flag NO is not trusted
    out = anonymize_dataset(ds, SALT, AnonymizeConfig())
    assert out.status == "quarantined" and ds.PatientID == "P-42"
    boxes = [b.region for b in find_burned_in_text(img)]
    assert len(boxes) >= 1
    assert out.reason == f"burned-in text found by OCR at {boxes} (x, y, width, height)"
    out = _run(ds, AnonymizeConfig(burned_in="blank"))
    assert ds.BurnedInAnnotation == "NO" and ds.PatientID == out.patient_pseudonym
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert find_burned_in_text(ds.pixel_array) == []
    assert (ds.pixel_array[:400] == img[:400]).all()        # only the label's boxes change
    assert {"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "C", "path": "PixelData",
            "ocr_regions": boxes} in out.audit["changes"]
    assert "113101" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    kept, _ = _with_text()
    assert not [c for c in _run(kept, NO_OCR).audit["changes"] if c["keyword"] == "PixelData"]


@pytest.mark.parametrize("mode, tail", [
    ("quarantine", ""), ("blank", " (a multi-frame or colour image is not blanked)")])
def test_every_frame_is_read_and_a_multi_frame_image_is_not_blanked(mode, tail):
    ds, img = _with_text(frames=2)
    out = anonymize_dataset(ds, SALT, AnonymizeConfig(burned_in=mode))
    boxes = [b.region for b in find_burned_in_text(img)]
    assert out.status == "quarantined"
    assert out.reason == (f"burned-in text found by OCR at {boxes} of frame 2 "
                          f"(x, y, width, height){tail}")


def test_a_removed_sequence_read_without_vrs_counts_its_nested_items():
    leaf = Dataset()
    leaf.ReferencedSOPInstanceUID = OWN_UID
    mid = Dataset()
    mid.ReferencedImageSequence = Sequence([leaf])
    mid.ReferencedSOPInstanceUID = OWN_UID + ".1"
    other = Dataset()
    other.PatientID = "P-42"
    ds = _reread(_image(ReferencedStudySequence=Sequence([mid]),
                        OtherPatientIDsSequence=Sequence([other])))
    assert ds.get_item(0x00101002).VR is None
    out = _run(ds)                                      # Z (emptied) and X (removed) alike
    assert out.audit["counts"]["X"] == {"ReferencedImageSequence": 1,
                                        "ReferencedSOPInstanceUID": 2, "PatientID": 1,
                                        "OtherPatientIDsSequence": 1}


def test_each_code_item_gets_its_own_meaning():
    def code(value, scheme, meaning):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return item
    ds = _image(AnatomicRegionSequence=Sequence([code("122494005", "SCT", "ROE")]),
                ViewCodeSequence=Sequence([code("399348003", "SCT", "ROE")]))
    _run(ds)
    sct = tb.standard_codes("SCT")
    assert ds.AnatomicRegionSequence[0].CodeMeaning == sct["122494005"]
    assert ds.ViewCodeSequence[0].CodeMeaning == sct["399348003"] != sct["122494005"]


def test_a_code_without_a_value_has_no_standard_meaning():
    # pydicom's LOINC dictionary holds an entry whose value is empty: a code item without a
    # value must not take its meaning (nor keep the input's)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "", "LN", "ROE^RICHARD"
    ds = _image(ViewCodeSequence=Sequence([item]))
    _run(ds)
    assert [dict(i) for i in ds.ViewCodeSequence] == []    # nothing kept: the item goes


def test_a_private_element_whose_creator_is_blank_is_never_kept():
    ds = _image()
    ds.add_new(0x00130010, "LO", "   ")                # a creator of spaces
    ds.add_new(0x00131005, "LO", "ROE^RICHARD")
    # the params loader refuses a blank creator (below); the engine refuses it too
    out = _run(ds, AnonymizeConfig(ocr=False, private_allowlist=["0013, ,05", "0013,,05"]))
    assert 0x00131005 not in ds and 0x00130010 not in ds
    assert out.audit["counts"]["X"]["(0013,1005)"] == 1
    for entry, ok in (("0013, ,05", False), ("0013,,05", False), ("0009,GEMS_IDEN_01,10", True),
                      ("0011, ACME ,02", True), ("0009,ACME,1", False), ("009,ACME,10", False)):
        assert bool(re.fullmatch(tb.ALLOWLIST_PATTERN, entry)) is ok, entry


# ---- every error names the file, and only the file it is given

def _jpeg_frame(after_app0: bytes = b"") -> bytes:
    """A baseline JPEG of a 64 x 64 ramp with ``after_app0`` after its JFIF header: marker
    segments, or bytes that are no marker (decoders skip those)."""
    ok, buf = cv2.imencode(".jpg", (np.add.outer(np.arange(64), np.arange(64)) * 2 % 256
                                    ).astype(np.uint8))
    assert ok
    data = buf.tobytes()
    assert data[2:4] == b"\xff\xe0"                          # the JFIF header comes first
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    return data[:app0_end] + after_app0 + data[app0_end:]


def _jpeg_object(frame: bytes) -> Dataset:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit
    ds = _image()
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def _without(ds: Dataset, *keywords: str) -> Dataset:
    for keyword in keywords:
        delattr(ds, keyword)
    return ds


def _float_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    ds.FloatPixelData = np.zeros(16, np.float32).tobytes()
    ds.file_meta.TransferSyntaxUID = OWN_UID               # no transfer syntax of the standard
    return ds


def _tabs_for_study(ds: Dataset) -> Dataset:
    ds[0x0020000D] = _raw(0x0020000D, "LO", b"\t\t")      # a study UID of blanks, as text
    return _without(ds, "PatientID")


def _truncated(ds: Dataset) -> Dataset:
    ds.PixelData = ds.PixelData[:-2]
    return ds


def _twelve_bits(ds: Dataset) -> Dataset:
    ds.BitsAllocated = 12                                  # no reader for OCR to use
    ds.PixelData = b"\0" * 24
    return ds


_BLANK = AnonymizeConfig(ocr=False, burned_in="blank", blank_regions=[[0, 0, 1, 1]])


@pytest.mark.parametrize("make, options, error, tag", [
    (lambda: _without(_image(), "SOPClassUID"), NO_OCR, InvalidDicomError, "(0008,0016)"),
    (lambda: _truncated(_image()), NO_OCR, InvalidDicomError, "(7FE0,0010)"),
    (lambda: _twelve_bits(_image()), AnonymizeConfig(), InvalidDicomError, "(7FE0,0010)"),
    (lambda: _without(_image(), "SOPInstanceUID"), NO_OCR, InvalidDicomError, "(0008,0018)"),
    (lambda: _tabs_for_study(_image()), NO_OCR, InvalidDicomError, "(0010,0020)"),
    (lambda: _image(BurnedInAnnotation="YES", NumberOfFrames=2, PixelData=bytes(64)), _BLANK,
     InvalidDicomError, None),
    (lambda: _float_pixels(_image()), NO_OCR, UnsupportedDicomError, "(0002,0010)"),
    (lambda: _jpeg_object(_jpeg_frame(b"\0\0")), NO_OCR, InvalidDicomError,
     "(7FE0,0010)"),
], ids=["no-sop-class", "truncated-pixels", "unreadable-pixels-for-ocr", "no-sop-instance",
        "no-patient-nor-study", "multi-frame-to-blank", "unknown-transfer-syntax",
        "unreadable-jpeg-markers"])
def test_every_error_names_the_file_it_is_given_and_no_other(make, options, error, tag):
    with pytest.raises(error) as err:
        anonymize_dataset(make(), SALT, options, file="scans/a.dcm")
    assert err.value.file == "scans/a.dcm" and err.value.tag == tag
    with pytest.raises(error) as err:                      # an object with no file name
        anonymize_dataset(make(), SALT, options)
    assert not err.value.file and "scans" not in str(err.value)


@pytest.mark.parametrize("syntax", [OWN_UID, ""])
def test_an_unknown_transfer_syntax_is_refused_naming_file_tag_and_value(syntax):
    ds = _image()
    ds.file_meta.TransferSyntaxUID = syntax
    engine = en._Engine(SALT, NO_OCR, "PSEUDO", "key")
    with pytest.raises(UnsupportedDicomError) as err:
        engine.file_meta(ds, "x.dcm")
    assert (err.value.file, err.value.tag) == ("x.dcm", "(0002,0010)")
    assert f"transfer syntax {syntax!r} " in err.value.message     # the value found, quoted


# ---- the audit records every change, with its path


def test_markers_removed_from_compressed_pixels_are_one_audited_change():
    text = b"ROE^RICHARD"
    com = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    app5 = b"\xff\xe5" + (len(text) + 2).to_bytes(2, "big") + text
    ds = _jpeg_object(_jpeg_frame(com + app5))
    out = _run(ds)
    assert text not in ds.PixelData
    assert [c for c in out.audit["changes"] if c["tag"] == "(7FE0,0010)"] == [
        {"tag": "(7FE0,0010)", "keyword": "PixelData", "action": "R", "path": "PixelData",
         "removed": ["APP5", "COM"]}]
    assert out.audit["counts"]["R"] == {"PixelData": 1}


def test_kept_values_are_audited_as_kept_checked_or_remapped_with_their_paths():
    ref = Dataset()
    ref.ReferencedSOPClassUID = OWN_UID                     # a class UID of no standard
    ref.ReferencedSOPInstanceUID = OWN_UID
    ds = _image(SOPClassUID="1.2.840.10008.5.1.4.1.1.1", ViewPosition="ROE",
                ImageType=["ORIGINAL", "ROE"], PatientOrientation=["A", "MRN1"],
                SourceImageSequence=Sequence([ref]))
    ds[0x00181404] = _raw(0x00181404, "US", b"ROE^RICHARD!")  # Exposures on Plate: 6 values
    out = _run(ds)
    assert list(ds.ImageType) == ["ORIGINAL", ""] and list(ds.PatientOrientation) == ["A", ""]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert out.audit["counts"]["K"]["SOPClassUID"] == 1
    assert not [c for c in out.audit["changes"] if c["keyword"] == "SOPClassUID"]
    changes = out.audit["changes"]
    for tag, keyword, action, path in (
            ("(0018,5101)", "ViewPosition", "V", "ViewPosition"),
            ("(0008,0008)", "ImageType", "V", "ImageType"),
            ("(0020,0020)", "PatientOrientation", "V", "PatientOrientation"),
            ("(0018,1404)", "ExposuresOnPlate", "X", "ExposuresOnPlate"),
            ("(0008,1150)", "ReferencedSOPClassUID", "U",
             "SourceImageSequence[0].ReferencedSOPClassUID")):
        assert {"tag": tag, "keyword": keyword, "action": action, "path": path} in changes


def test_removed_private_and_nested_pixel_elements_are_listed_with_their_paths():
    item = Dataset()
    item.ReferencedSOPInstanceUID = OWN_UID
    item.PixelData = b"ROE^RICHARD!"
    item.private_block(0x0011, "ACME", create=True).add_new(0x02, "LO", "ROE")
    ds = _image(SourceImageSequence=Sequence([item]))
    ds.private_block(0x0013, "ACME", create=True).add_new(0x01, "LO", "ROE")
    changes = _run(ds).audit["changes"]
    for tag, keyword, path in (
            ("(7FE0,0010)", "PixelData", "SourceImageSequence[0].PixelData"),
            ("(0011,1002)", "(0011,1002)", "SourceImageSequence[0].(0011,1002)"),
            ("(0013,1001)", "(0013,1001)", "(0013,1001)")):
        assert {"tag": tag, "keyword": keyword, "action": "X", "path": path} in changes


def test_elements_written_with_a_vr_not_their_own():
    # D and N rows replace the value whatever was written; a D row of a UI attribute
    # holding no UID, like any other kept or remapped element, is removed
    ds = _image()
    ds[0x0040A075] = _raw(0x0040A075, "LO", b"ROE^RICHARD ")   # Verifying Observer Name (PN)
    ds[0x006A0003] = _raw(0x006A0003, "LO", b"ROE^RICHARD ")   # Annotation Group UID (UI)
    ds[0x00120062] = _raw(0x00120062, "LO", b"NO")             # Patient Identity Removed (CS)
    ds[0x00020010] = _raw(0x00020010, "UI", b"1.2.840.10008.1.2.1\0")  # file meta, misplaced
    out = _run(ds)
    assert ds.VerifyingObserverName == "ANONYMIZED" and ds["VerifyingObserverName"].VR == "PN"
    assert 0x006A0003 not in ds and 0x00020010 not in ds
    assert ds.PatientIdentityRemoved == "YES"
    counts = out.audit["counts"]
    assert counts["D"]["VerifyingObserverName"] == 1 and counts["N"]["PatientIdentityRemoved"] == 1
    assert counts["X"]["AnnotationGroupUID"] == 1 and counts["X"]["TransferSyntaxUID"] == 1
    assert counts["K"]["TransferSyntaxUID"] == 1            # the file meta's own: kept
    for tag, keyword in (("(006A,0003)", "AnnotationGroupUID"),
                         ("(0002,0010)", "TransferSyntaxUID")):
        assert {"tag": tag, "keyword": keyword, "action": "X", "path": keyword} in \
            out.audit["changes"]


# ---- burned-in annotation: the mode decides, the reason says why


def test_a_burned_in_flag_quarantines_in_quarantine_mode_even_with_regions():
    ds = _image(BurnedInAnnotation="YES")
    pixels = ds.PixelData
    out = anonymize_dataset(ds, SALT, AnonymizeConfig(ocr=False, blank_regions=[[0, 0, 2, 2]]))
    assert (out.status, out.reason) == ("quarantined", "BurnedInAnnotation YES")
    assert ds.PixelData == pixels and ds.PatientID == "P-42"
    out = anonymize_dataset(ds, SALT, AnonymizeConfig(ocr=False, burned_in="blank"))
    assert (out.status, out.reason) == (
        "quarantined", "BurnedInAnnotation YES and no blank_regions configured")


def test_text_found_in_a_colour_image_quarantines_it_in_blank_mode():
    ds, img = _with_text()
    grey = (img // 16).astype(np.uint8)                    # the same label, 8 bits
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.ascontiguousarray(np.stack([grey] * 3, axis=-1)).tobytes()
    boxes = [b.region for b in find_burned_in_text(grey)]
    assert len(boxes) >= 1
    out = anonymize_dataset(ds, SALT, AnonymizeConfig(burned_in="blank"))
    assert out.status == "quarantined"
    assert out.reason == (f"burned-in text found by OCR at {boxes} (x, y, width, height) "
                          "(a multi-frame or colour image is not blanked)")
    assert ds.PatientID == "P-42"


# ---- identifiers: stable across versions, never made up


def test_a_remapped_uid_is_the_same_in_every_version():
    # HMAC-SHA256(salt, "uid\0" + uid), first 128 bits, big-endian: pinned, so that a
    # project's objects anonymized by an earlier spinepipe keep referring to the same UIDs
    assert ledger.remap_uid(SALT, OWN_UID) == "2.25.275728543934914377434034035932275388782"


def test_the_outcome_names_no_uid_the_object_does_not_carry():
    ds = _without(_image(), "SeriesInstanceUID")
    ds[0x0020000D] = _raw(0x0020000D, "LO", b"1.2.3.4 ")  # Study Instance UID as text: removed
    out = _run(ds)
    assert "StudyInstanceUID" not in ds and "SeriesInstanceUID" not in ds
    assert out.new_study_uid == "" and out.ledger["new_study_instance_uid"] == ""
    assert out.ledger["new_series_instance_uid"] == ""
    assert out.ledger["study_instance_uid"] == "1.2.3.4"


def test_a_well_known_uid_is_kept_whatever_attribute_holds_it():
    talairach = "1.2.840.10008.1.4.1.1"       # a Frame of Reference UID of PS3.6 Annex A
    ds = _image(FrameOfReferenceUID=talairach, FailedSOPInstanceUIDList=[talairach, OWN_UID])
    _run(ds)
    assert ds.FrameOfReferenceUID == talairach
    assert list(ds.FailedSOPInstanceUIDList) == [talairach, ledger.remap_uid(SALT, OWN_UID)]


def test_allowlisted_private_elements_are_named_in_hexadecimal():
    ds = _image()
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x1A, "DS", "1.5")
    block.add_new(0x10, "DS", "2.5")
    _run(ds, AnonymizeConfig(ocr=False, private_allowlist=["0011,ACME,1A"]))
    assert ds[0x0011101A].value == "1.5" and 0x00111010 not in ds


# ---- the file meta


def test_an_object_without_file_meta_gets_none():
    ds = _image()
    del ds.file_meta
    out = _run(ds)
    assert getattr(ds, "file_meta", None) is None
    assert not [c for c in out.audit["changes"] if c["path"].startswith("file_meta.")]


def test_the_file_meta_information_version_is_kept_as_written():
    ds = _image()
    ds.file_meta.FileMetaInformationVersion = b"\x00\x02"
    out = _run(ds)
    assert ds.file_meta.FileMetaInformationVersion == b"\x00\x02"
    assert out.audit["counts"]["K"]["FileMetaInformationVersion"] == 1


# ---- the table's special rows, and elements read in odd encodings


def test_each_special_row_applies_to_its_own_class_of_tags():
    engine = en._Engine(SALT, NO_OCR, "PSEUDO", "key")
    engine.rules = {0x00280010: ("K", ""), "curves": ("Z", "c"), "overlays": ("D", "o"),
                    "group_length": ("N", "g"), "default": ("X", "d")}
    for tag, expected in ((0x00280010, ("K", "")), (0x50000010, ("Z", "c")),
                          (0x501E0000, ("Z", "c")), (0x60003000, ("D", "o")),
                          (0x601E0000, ("D", "o")), (0x00080000, ("N", "g")),
                          (0x00280000, ("N", "g")), (0x00089999, ("X", "d")),
                          (0x00080001, ("X", "d"))):
        assert engine.rule(Tag(tag)) == expected, hex(tag)


def test_text_values_lose_their_nul_padding():
    assert en._text_values(DataElement(0x00080008, "CS", ["AX\0", " XA"])) == ["AX", "XA"]
    assert en._text_values(_raw(0x00081155, "UI", b"\0\0")) == []
    assert en._text_values(_raw(0x00080008, "CS", b"ORIGINAL\0\\XA ")) == ["ORIGINAL", "XA"]


def _implicit(tag: int, value: bytes) -> bytes:
    """One element as implicit VR little endian writes it."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _un_sequence(tag: int, *elements: bytes) -> RawDataElement:
    """A sequence of one item written with VR UN (its value implicit VR, as PS3.5 says)."""
    body = b"".join(elements)
    return _raw(tag, "UN", struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body)


def test_a_removed_sequence_written_as_un_counts_what_it_held():
    uid = OWN_UID.encode() + b"\0"
    item = Dataset()
    item[0x00081140] = _un_sequence(0x00081140, _implicit(0x00081155, uid))
    item.ReferencedSOPInstanceUID = OWN_UID
    ds = _image(ReferencedStudySequence=Sequence([item]))            # Z: emptied
    ds[0x00101002] = _un_sequence(0x00101002, _implicit(0x00100020, b"P-42"))  # X: removed
    out = _run(ds)
    assert len(ds.ReferencedStudySequence) == 0 and 0x00101002 not in ds
    assert out.audit["counts"]["X"] == {"ReferencedImageSequence": 1,
                                        "ReferencedSOPInstanceUID": 2, "PatientID": 1,
                                        "OtherPatientIDsSequence": 1}


def test_an_undecodable_sequence_in_a_removed_item_leaves_the_rest_counted():
    item = Dataset()
    item[0x00081140] = RawDataElement(Tag(0x00081140), None, 4, b"\x01\x02\x03\x04", 0, True,
                                      True)                 # no item tag: pydicom cannot read it
    item.ReferencedSOPInstanceUID = OWN_UID
    out = _run(_image(ReferencedStudySequence=Sequence([item])))
    assert out.audit["counts"]["X"] == {"ReferencedImageSequence": 1,
                                        "ReferencedSOPInstanceUID": 1}


def test_a_transfer_syntax_the_standard_does_not_define_names_the_file():
    """Before any element is judged, an undefined transfer syntax (the file's own claim) is
    one error naming the file it was given."""
    ds = _image()
    ds.file_meta.TransferSyntaxUID = "1.2.3"
    with pytest.raises(InvalidDicomError) as err:
        anonymize_dataset(ds, SALT, NO_OCR, file="scans/a.dcm")
    assert err.value.file == "scans/a.dcm" and "1.2.3" in err.value.message
