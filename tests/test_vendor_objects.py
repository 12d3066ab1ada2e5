"""Real vendor objects through ``spinepipe anonymize`` and ``spinepipe export`` (issue #21, item
8).

The radiographs are the full-size computed radiography objects that ``pydicom-data`` (PyPI,
the test-data package of pydicom; found by name with ``pydicom.data.get_testdata_file``)
ships from the NEMA / Clunie compression samples: a Philips CR (``RG1``, 1955 x 1841, 15 bits
stored, MONOCHROME1) and a Fuji CR (``RG3``, 1760 x 1760, 10 bits stored, MONOCHROME1), each
uncompressed (``UNCR``), JPEG 2000 lossless (``J2KR``) and JPEG 2000 lossy (``J2KI``): six
objects, six distinct SOP Instance UIDs. (``UNCI`` is the lossy one decompressed and shares
``J2KI``'s SOP Instance UID, so it is left out; the package holds no DX.)

Both commands run in-process as a curator runs them (``pipeline.cli.main``), with the
default parameters, on one input folder holding the six files. Checked:

- both exit 0; one anonymized object and one PNG per source;
- each PNG has its source's Rows x Columns, and its pixels are exactly
  :func:`converters.dicom.pixels.to_display` of the anonymized object (export's own settings);
- the anonymized object decodes to the very pixels of its source (de-identification does
  not touch the image, also through the cleaned JPEG 2000 codestreams);
- no original identifying value is in any byte of any output file (``anon/`` and ``png/``;
  the private folder holds the ledger of originals by design): every PN value at any depth,
  and the values of the PS3.15 Table E.1-1 attributes these files carry (listed here, from
  the standard, not from spinepipe's table), the file meta's identifying fields included.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from converters.dicom.export import ExportConfig
from converters.dicom.ledger import load_ledger
from converters.dicom.pixels import to_display
from pipeline.cli import main

#: pydicom-data file -> (manufacturer, rows, columns, transfer syntax)
VENDOR_FILES = {
    "RG1_UNCR.dcm": ("Philips Medical Systems", 1955, 1841, "1.2.840.10008.1.2.1"),
    "RG1_J2KR.dcm": ("Philips Medical Systems", 1955, 1841, "1.2.840.10008.1.2.4.90"),
    "RG1_J2KI.dcm": ("Philips Medical Systems", 1955, 1841, "1.2.840.10008.1.2.4.91"),
    "RG3_UNCR.dcm": ("FUJI PHOTO FILM CO. LTD.", 1760, 1760, "1.2.840.10008.1.2.1"),
    "RG3_J2KR.dcm": ("FUJI PHOTO FILM CO. LTD.", 1760, 1760, "1.2.840.10008.1.2.4.90"),
    "RG3_J2KI.dcm": ("FUJI PHOTO FILM CO. LTD.", 1760, 1760, "1.2.840.10008.1.2.4.91"),
}

#: PS3.15 Table E.1-1 attributes (Basic Profile action X, Z, D or U) that these objects carry;
#: with the file meta's fields that name the source system. Times are left out (the
#: longitudinal-dates option decides them), PN values are taken wherever they are.
IDENTIFYING = [
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
    "StudyID", "StudyDescription", "ImageComments", "DerivationDescription",
    "InstitutionName", "InstitutionalDepartmentName", "ReferringPhysicianName", "StationName",
    "DeviceSerialNumber", "AcquisitionDeviceProcessingDescription", "StudyDate", "SeriesDate",
    "ContentDate", "AcquisitionDate", "InstanceCreationDate", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "InstanceCreatorUID", "ReferencedSOPInstanceUID",
    "MediaStorageSOPInstanceUID", "SourceApplicationEntityTitle", "ImplementationVersionName",
]
#: shorter values (a sex, a 3-letter name part) are not searched for in binary files
MIN_LENGTH = 4


def source(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} not found: pip install pydicom-data (test extras)"
    return Path(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """The six objects anonymized and exported once; exit statuses and stderr kept."""
    root = tmp_path_factory.mktemp("vendor")
    (root / "in").mkdir()
    for name in VENDOR_FILES:
        (root / "in" / name).write_bytes(source(name).read_bytes())
    common = ["--params", str(root / "none.yaml"), "--quiet", "--workers", "1"]
    result = {"root": root}
    for stage, args in (
            ("anonymize", ["anonymize", "-i", str(root / "in"), "-o", str(root / "anon"),
                           "--private", str(root / "private"), *common]),
            ("export", ["export", "-i", str(root / "anon"), "-o", str(root / "png"),
                        *common])):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            result[stage] = main(args)
        result[stage + "_err"] = err.getvalue()
    return result


def exported(run: dict) -> dict[str, tuple[Path, Path]]:
    """Source file name -> (its PNG, its anonymized object), through export's provenance
    records and the private ledger (new SOP Instance UID -> the original one)."""
    root = run["root"]
    by_sop = {str(pydicom.dcmread(source(n), stop_before_pixels=True).SOPInstanceUID): n
              for n in VENDOR_FILES}
    instances = load_ledger(root / "private")["instances"]
    out = {}
    for prov in sorted((root / "png" / "provenance").glob("*.json")):
        record = json.loads(prov.read_text())
        original = instances[record["sop_instance_uid"]]["sop_instance_uid"]
        out[by_sop[original]] = (root / "png" / record["image"], root / "anon" / record["source"])
    return out


def test_the_vendor_files_are_the_full_size_radiographs():
    for name, (maker, rows, cols, syntax) in VENDOR_FILES.items():
        ds = pydicom.dcmread(source(name), stop_before_pixels=True)
        assert (ds.Modality, ds.Manufacturer, ds.Rows, ds.Columns) == ("CR", maker, rows, cols)
        assert ds.file_meta.TransferSyntaxUID == syntax, name
    assert len({pydicom.dcmread(source(n), stop_before_pixels=True).SOPInstanceUID
                for n in VENDOR_FILES}) == len(VENDOR_FILES)


def test_anonymize_and_export_succeed_one_png_per_object(run):
    assert run["anonymize"] == 0, run["anonymize_err"]
    assert run["export"] == 0, run["export_err"]
    anonymized = [p for p in (run["root"] / "anon").rglob("*.dcm")]
    assert len(anonymized) == len(VENDOR_FILES), anonymized
    assert len(list((run["root"] / "png").glob("*.png"))) == len(VENDOR_FILES)
    assert sorted(exported(run)) == sorted(VENDOR_FILES)


def test_each_png_is_the_display_of_its_anonymized_object_at_full_size(run):
    assert run["export"] == 0, run["export_err"]
    pairs = exported(run)
    assert len(pairs) == len(VENDOR_FILES)
    display = ExportConfig().display()  # the defaults export ran with
    for name, (png, anon) in pairs.items():
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        _, rows, cols, _ = VENDOR_FILES[name]
        assert img.shape == (rows, cols) and img.dtype == np.uint8, (name, img.shape)
        expected, _ = to_display(pydicom.dcmread(anon), display)
        assert np.array_equal(img, expected), name


def test_anonymized_objects_keep_the_source_pixels(run):
    assert run["anonymize"] == 0, run["anonymize_err"]
    pairs = exported(run)
    assert len(pairs) == len(VENDOR_FILES)
    for name, (_, anon) in pairs.items():
        original = pydicom.dcmread(source(name)).pixel_array
        assert np.array_equal(pydicom.dcmread(anon).pixel_array, original), name


def identifying_values(ds: Dataset) -> set[str]:
    """The identifying values of ``ds`` at any depth, and of its file meta."""
    values: set[str] = set()

    def collect(elem) -> None:
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            return
        if elem.keyword in IDENTIFYING or elem.VR == "PN":
            raw = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) \
                else [elem.value]
            for v in map(str, raw):
                values.add(v.strip())
                if elem.VR == "PN":
                    values.update(part.strip() for part in v.split("^"))

    ds.walk(lambda _, elem: collect(elem))
    for elem in ds.file_meta:
        collect(elem)
    return {v for v in values if len(v) >= MIN_LENGTH}


def standard_meanings() -> dict[tuple[str, str], str]:
    """(coding scheme, code value) -> the standard's code meaning (pydicom's dictionary)."""
    from pydicom.sr._concepts_dict import concepts

    return {(scheme, value): meaning for scheme, by_name in concepts.items()
            for entries in by_name.values() for value, (meaning, _) in entries.items()}


def without_standard_text(path: Path, blob: bytes, known: dict) -> bytes:
    """``blob`` less the code meanings of a DICOM output that are the standard's own text for
    their code (DCM 121320 means "Uncompressed predecessor" whatever the source said; its
    ImageComments "Uncompressed" must not match there)."""
    if path.suffix != ".dcm":
        return blob
    meanings: set[str] = set()

    def collect(ds, elem) -> None:
        if elem.keyword == "CodeMeaning" and known.get(
                (ds.get("CodingSchemeDesignator"), ds.get("CodeValue"))) == elem.value:
            meanings.add(elem.value)

    pydicom.dcmread(path, stop_before_pixels=True).walk(lambda ds, e: collect(ds, e))
    for meaning in meanings:
        blob = blob.replace(meaning.encode(), b"")
    return blob


def test_no_identifying_value_of_the_sources_in_any_output(run):
    assert run["anonymize"] == 0 and run["export"] == 0, run["anonymize_err"] + run["export_err"]
    values: set[str] = set()
    for name in VENDOR_FILES:
        values |= identifying_values(pydicom.dcmread(source(name), stop_before_pixels=True))
    for expected in ("CompressedSamples^RG1", "CompressedSamples", "9RG1", "11RG3", "ward",
                     "N.C.C. HIGASHI", "Philips Medical Systems Hamburg", "19400305",
                     "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457", "CLUNIE1", "DCTOOL100"):
        assert expected in values, expected  # the scan looks for what it should
    outputs = [p for d in ("anon", "png") for p in (run["root"] / d).rglob("*") if p.is_file()]
    assert len(outputs) > 2 * len(VENDOR_FILES)
    known, leaks = standard_meanings(), []
    for path in outputs:
        blob = without_standard_text(path, path.read_bytes(), known)
        leaks += [f"{path.name}: {v!r}" for v in sorted(values) if v.encode() in blob]
    assert leaks == [], leaks
