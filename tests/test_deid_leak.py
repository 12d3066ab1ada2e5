"""De-identification as an allowlist (issue 21): a marker planted in every attribute of the
data dictionary a radiograph can carry, in a private tag, nested sequences, code meanings,
the file meta, the preamble and the JPEG markers of encapsulated pixel data is found in no
output byte; each place identifiers were found to survive, one by one; and the audit names
an action for every element of the input.

Anonymization runs through the real ``spinepipe anonymize`` command (in-process,
``pipeline.cli.main``) or :func:`converters.dicom.anonymize.anonymize_tree`, on real pydicom files.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from conftest import dicom_image
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.anonymize import anonymize_tree
from converters.dicom.ledger import load_or_create_salt, prepare_private
from pipeline.cli import main

MARKER = "ZQXLEAK"
#: a UID made to be found: its digits never occur in a remapped 2.25 UID by chance
MARKER_UID = "1.2.999.98765432101234567"
NEEDLES = (MARKER.encode(), MARKER.lower().encode(), b"98765432101234567")
NO_PARAMS = "/nonexistent/params.yaml"  # defaults: only the arguments count
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
            "UR", "UT"}
#: structural attributes whose value decides how the pixels are read: a marker there makes the
#: object fail (nothing written: no leak, but nothing tested either); each is checked by its
#: own row's value check (test_anonymize's table test)
STRUCTURAL = {0x00280004, 0x00280008}   # Photometric Interpretation, Number of Frames


def _marker_value(vr: str) -> str | None:
    if vr == "UI":
        return MARKER_UID
    if vr == "PN":
        return f"{MARKER}^{MARKER}"
    return MARKER if vr in TEXT_VRS else None


def _raw(tag: int, vr: str, text: str) -> RawDataElement:
    """An element written as given (pydicom refuses to build a number string of text)."""
    value = text.encode()
    value += (b"\0" if vr == "UI" else b" ") * (len(value) % 2)
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _raw_bytes(tag: int, value: bytes) -> RawDataElement:
    """Bytes stored under a tag as VR UN (the dictionary then says how to read them)."""
    return RawDataElement(Tag(tag), "UN", len(value), value, 0, False, True)


def _marked_item(depth: int) -> Dataset:
    """A sequence item full of the marker (an unknown code, a name, text, a UID), nesting
    ``depth`` more levels."""
    item = Dataset()
    item.CodeValue = MARKER
    item.CodingSchemeDesignator = "99ZQX"
    item.CodeMeaning = MARKER
    item.PatientName = MARKER
    item.PatientID = MARKER
    item.TextValue = MARKER
    item.ReferencedSOPInstanceUID = MARKER_UID
    item.ReferencedSOPClassUID = MARKER_UID
    if depth:
        item.ReferencedImageSequence = Sequence([_marked_item(depth - 1)])
        item.AnatomicRegionSequence = Sequence([_known_code()])
    return item


def _known_code() -> Dataset:
    """A standard code (SNOMED CT lumbar spine) whose meaning was typed over with the marker."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "122496007", "SCT"
    code.CodeMeaning = MARKER
    return code


def _jpeg(pixels: np.ndarray) -> bytes:
    """A baseline JPEG of ``pixels`` (8-bit) with the marker in a comment (COM) after the
    start of image and before its end, in an APP1 segment, and after the end of image."""
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = buf.tobytes()
    text = f"{MARKER} patient {MARKER}".encode()
    com = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    app1 = b"\xff\xe1" + (len(text) + 8).to_bytes(2, "big") + b"Exif\0\0" + text
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    return data[:2] + com + app1 + data[2:-2] + com + b"\xff\xd9" + MARKER.encode() + b"\0"


def _jpeg_image(**extra) -> Dataset:
    """A JPEG-compressed 8-bit CR radiograph (64 x 64) whose codestream carries the marker."""
    ds = dicom_image(64, **extra)
    pixels = (np.add.outer(np.arange(64), np.arange(64)) * 2 % 256).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([_jpeg(pixels)])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return ds


def _j2k_image(**extra) -> Dataset:
    """A JPEG 2000 CR radiograph whose main header carries the marker in a COM segment."""
    ds = dicom_image(64, **extra)
    ds.compress(JPEG2000Lossless, ds.pixel_array)
    from pydicom.encaps import generate_frames
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    siz_end = 4 + int.from_bytes(frame[4:6], "big")
    text = b"\x00\x01" + f"{MARKER} patient".encode()
    com = b"\xff\x64" + (len(text) + 2).to_bytes(2, "big") + text
    ds.PixelData = encapsulate([frame[:siz_end] + com + frame[siz_end:]])
    return ds


def _plant_everywhere(ds: Dataset) -> int:
    """The marker in every text attribute of pydicom's dictionary (UIDs: a marker UID), a
    marked item (nesting two levels) in every sequence attribute; returns how many."""
    planted = 0
    for tag, (vr, _vm, _name, _retired, _kw) in DicomDictionary.items():
        group = tag >> 16
        # command (0000) and file meta (0002) groups: pydicom writes neither into a data set
        if group in (0x0000, 0x0002, 0xFFFE, 0x7FE0) or tag in STRUCTURAL or tag & 0xFFFF == 0:
            continue
        if vr == "SQ":
            ds.add(DataElement(tag, "SQ", Sequence([_marked_item(2)])))
        elif _marker_value(vr) is not None:
            ds[tag] = _raw(tag, vr, _marker_value(vr))
        else:
            continue
        planted += 1
    ds.AnatomicRegionSequence = Sequence([_known_code()])
    block = ds.private_block(0x0009, f"{MARKER} CREATOR", create=True)
    block.add_new(0x10, "LO", MARKER)
    block.add_new(0x11, "SQ", Sequence([_marked_item(1)]))
    ds.add(DataElement(0x00089998, "LO", MARKER))   # a public tag no dictionary knows
    ds.add(DataElement(0x60000022, "LO", MARKER))   # Overlay Description (repeating group)
    ds.add(DataElement(0x50002500, "LO", MARKER))   # Curve Label (retired, repeating group)
    ds[0x00280106] = _raw_bytes(0x00280106, MARKER.encode() + b"\0")  # text as numbers
    meta = ds.file_meta
    meta.ImplementationVersionName = MARKER
    meta.ImplementationClassUID = MARKER_UID
    meta.SourceApplicationEntityTitle = MARKER
    meta.SendingApplicationEntityTitle = MARKER
    meta.ReceivingApplicationEntityTitle = MARKER
    meta.PrivateInformationCreatorUID = MARKER_UID
    meta.PrivateInformation = MARKER.encode() * 2
    return planted


def _found(root: Path) -> list[str]:
    """Every place under ``root`` (file bytes and file names) where a needle occurs."""
    hits = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            blob = p.read_bytes() + str(p.relative_to(root)).encode()
            hits += [f"{needle!r} in {p.relative_to(root)}" for needle in NEEDLES
                     if needle in blob]
    return hits


def _write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.preamble = (f"{MARKER} " * 16).encode()[:128]
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_marker_planted_everywhere_is_found_in_no_output(tmp_path, capsys):
    """The class test: every text attribute of the dictionary, every sequence (nested two
    deep), a private block, an unknown public tag, code meanings, the file meta, the preamble
    and JPEG COM / APP1 / trailing bytes in the pixel data carry the marker; after
    ``spinepipe anonymize`` no byte of the output folder does (objects, audit, report)."""
    ds = _jpeg_image(PatientID="P-77", SOPInstanceUID="1.2.3.77.1")
    planted = _plant_everywhere(ds)
    assert planted > 3000
    src = _write(ds, tmp_path / "in" / "everything.dcm")
    assert all(n in src.read_bytes() for n in NEEDLES[::2])
    before = pydicom.dcmread(src).pixel_array
    out = tmp_path / "out"
    code = main(["anonymize", "--input", str(tmp_path / "in"), "--output", str(out),
                 "--private", str(tmp_path / "private"), "--params", NO_PARAMS, "--quiet",
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    (written,) = list(out.rglob("*.dcm"))   # anonymized, not failed: the test is not vacuous
    assert list((out / "audit").glob("*.json")) and (out / "report.json").is_file()
    assert _found(out) == []
    assert MARKER not in err
    after = pydicom.dcmread(written)
    assert np.array_equal(after.pixel_array, before)   # markers gone, pixels identical
    assert after.AnatomicRegionSequence[0].CodeMeaning == "Lumbar spine"


def _anonymized(ds: Dataset, tmp_path: Path, **options) -> tuple[Path, Path]:
    """(the output object, the output folder) of ``ds`` through anonymize_tree."""
    _write(ds, tmp_path / "in" / "a.dcm")
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(tmp_path / "in", tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig(**options))
    assert report.counts == {"anonymized": 1}, report.private_rows
    (written,) = list((tmp_path / "out").rglob("*.dcm"))
    return written, tmp_path / "out"


def _voi_lut() -> Sequence:
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])   # LUT Descriptor
    item.add_new(0x00283006, "US", [0, 100, 200, 300])   # LUT Data
    item.LUTExplanation = f"{MARKER} window"
    return Sequence([item])


def _code_sequence() -> Sequence:
    return Sequence([_known_code()])


# each place issue 21 found an identifier surviving the de-identification
@pytest.mark.parametrize("extra", [
    {"WindowCenterWidthExplanation": f"{MARKER} window"},
    {"VOILUTSequence": _voi_lut()},
    {"AnatomicRegionSequence": _code_sequence()},
    {"DerivationCodeSequence": _code_sequence()},
    {"ProcedureCodeSequence": _code_sequence()},
    {"TextValue": f"{MARKER} says hello"},
], ids=["WindowCenterWidthExplanation", "LUTExplanation", "AnatomicRegionCodeMeaning",
        "DerivationCodeMeaning", "ProcedureCodeMeaning", "TextValue"])
def test_each_surviving_attribute_is_gone(tmp_path, extra):
    ds = dicom_image(8, **extra)
    written, out = _anonymized(ds, tmp_path)
    assert _found(out) == []
    after = pydicom.dcmread(written)
    for kw in ("AnatomicRegionSequence", "DerivationCodeSequence", "ProcedureCodeSequence"):
        if kw in extra:   # the standard code stays, its meaning from the dictionary
            assert after[kw][0].CodeValue == "122496007"
            assert after[kw][0].CodeMeaning == "Lumbar spine"
    if "VOILUTSequence" in extra:   # the numbers a viewer needs stay
        assert list(after.VOILUTSequence[0].LUTData) == [0, 100, 200, 300]


def test_an_unknown_public_tag_is_removed(tmp_path):
    ds = dicom_image(8)
    ds.add(DataElement(0x00089998, "LO", f"{MARKER} unknown"))
    assert 0x00089998 not in DicomDictionary
    written, out = _anonymized(ds, tmp_path)
    assert 0x00089998 not in pydicom.dcmread(written)
    assert _found(out) == []


def test_the_file_meta_keeps_only_what_part_10_needs(tmp_path):
    ds = dicom_image(8)
    ds.file_meta.ImplementationVersionName = MARKER
    ds.file_meta.SourceApplicationEntityTitle = MARKER
    written, out = _anonymized(ds, tmp_path)
    meta = pydicom.dcmread(written).file_meta
    assert meta.ImplementationVersionName == "SPINEPIPE_DEID"
    assert meta.ImplementationClassUID.startswith("2.25.")
    assert meta.MediaStorageSOPInstanceUID == pydicom.dcmread(written).SOPInstanceUID
    assert sorted(e.keyword for e in meta) == sorted([
        "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID",
        "ImplementationVersionName"])
    assert _found(out) == []


@pytest.mark.parametrize("make", [_jpeg_image, _j2k_image], ids=["jpeg", "jpeg2000"])
def test_text_markers_of_encapsulated_pixel_data_are_removed(tmp_path, make):
    """JPEG COM / APP1 / bytes after EOI, JPEG 2000 COM: removed from the codestream, and the
    pixels decode exactly as before."""
    ds = make()
    before = ds.pixel_array
    written, out = _anonymized(ds, tmp_path)
    assert _found(out) == []
    after = pydicom.dcmread(written)
    assert after.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID  # not transcoded
    assert np.array_equal(after.pixel_array, before)


def _names(ds: Dataset) -> Counter:
    """keyword (or ``(GGGG,EEEE)``) -> number of elements, at every depth."""
    found: Counter = Counter()
    for elem in ds:
        found[keyword_for_tag(elem.tag) or f"({elem.tag.group:04X},{elem.tag.element:04X})"] += 1
        if elem.VR == "SQ":
            for item in elem.value:
                found += _names(item)
    return found


def test_the_audit_names_an_action_for_every_element(tmp_path):
    """Every element of the input (file meta, sequence items at every depth, private,
    unknown) is counted once in the audit, under the action that hit it."""
    ds = _jpeg_image()
    _plant_everywhere(ds)
    src = _write(ds, tmp_path / "in" / "a.dcm")
    read = pydicom.dcmread(src)
    expected = _names(read.file_meta) + _names(read)
    written, out = _anonymized(ds, tmp_path)
    import json
    (audit,) = [json.loads(p.read_text()) for p in (out / "audit").glob("*.json")]
    counted: Counter = Counter()
    for action, per in audit["counts"].items():
        assert action in "KPUSZDXQCNRV", action
        counted.update(per)
    assert counted == expected
    changed = {c["path"] for c in audit["changes"]}
    assert "WindowCenterWidthExplanation" in changed   # not kept: listed with its path
    assert "AnatomicRegionSequence[0].CodeMeaning" in changed
