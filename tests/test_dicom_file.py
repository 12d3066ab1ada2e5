"""One DICOM reader (converters/dicom/read.py, issue #22 item 4).

The class: a damaged DICOM file (not DICOM at all, cut short in its header or pixel data, a
transfer syntax the standard does not define, a FIFO in its place) reaches several stages.
Each damage must give the same one-line error, naming the file, in every stage that reads
DICOM: anonymize, export, store (retrieve's way back), to-seg, SEG reading and to-sr's SEG
headers; a raw dataset without preamble (as some archives store them) is read, not refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pydicom
import pytest
from conftest import dicom_image

from converters.dicom.read import read_dicom
from converters.core.errors import InvalidDicomError


def _good(tmp_path: Path) -> bytes:
    path = tmp_path / "good.dcm"
    dicom_image(size=16).save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _bad_syntax(data: bytes) -> bytes:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4"
    out = pydicom.filebase.DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


#: damage -> (bytes of the damaged file from a good one, the message read_dicom gives)
DAMAGES = {
    "text": (lambda good: b"PatientName=DOE^JOHN\n" * 20, "not a DICOM file"),
    "cut in the pixel data": (lambda good: good[:-100],
                              "truncated: the file ends inside PixelData (412 of 512 bytes)"),
    "cut in the header": (lambda good: good[:200], "no data set after the file meta"),
    "undefined transfer syntax": (_bad_syntax,
                                  "transfer syntax '1.2.3.4' is not one of the standard's"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_each_damage_is_one_error_naming_the_file(tmp_path, damage):
    make, says = DAMAGES[damage]
    path = tmp_path / "x.dcm"
    path.write_bytes(make(_good(tmp_path)))
    with pytest.raises(InvalidDicomError) as err:
        read_dicom(path)
    assert says in err.value.message and err.value.file == str(path)
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidDicomError) as from_bytes:
        read_dicom(path.read_bytes(), name="object 7")
    assert from_bytes.value.message == err.value.message and from_bytes.value.file == "object 7"


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pipe.dcm")
    with pytest.raises(InvalidDicomError, match=r"not a regular file \(FIFO\)"):
        read_dicom(tmp_path / "pipe.dcm")


def test_a_raw_dataset_without_preamble_is_read(tmp_path):
    ds = dicom_image(size=4)
    del ds.file_meta
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True,
               enforce_file_format=False)
    assert (tmp_path / "raw.dcm").read_bytes()[128:132] != b"DICM"
    got = read_dicom(tmp_path / "raw.dcm")
    assert got.SOPInstanceUID == "1.2.3.999.1" and len(got.PixelData) == 32
    head = read_dicom(tmp_path / "raw.dcm", header_only=True)
    assert "PixelData" not in head and head.PatientID == "MRN998877"


# --------------------------------------------------------------------------------------------
# every stage that reads DICOM says the same


def _damaged_tree(tmp_path: Path, damage: str) -> tuple[Path, str]:
    """``<root>/SP1/1.2.3/1.2.3.4.dcm`` (an anonymized tree's layout), damaged; its message."""
    make, says = DAMAGES[damage]
    path = tmp_path / "tree" / "SP1" / "1.2.3" / "1.2.3.4.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(make(_good(tmp_path)))
    return path, says


@pytest.mark.parametrize("damage", ["cut in the pixel data", "undefined transfer syntax"])
def test_every_stage_reads_dicom_through_it(tmp_path, damage, capsys):
    from converters.dicom.store import _read_for_store
    from converters.dicom.seg import read_seg
    from converters.dicom.sr import seg_reference
    from pipeline.cli import main
    from train.infer.to_seg import verify_identities

    path, says = _damaged_tree(tmp_path, damage)
    rel = "SP1/1.2.3/1.2.3.4.dcm"
    none = str(tmp_path / "none.yaml")
    assert main(["anonymize", "--input", str(tmp_path / "tree"), "--output",
                 str(tmp_path / "anon"), "--private", str(tmp_path / "private"), "--workers",
                 "1", "--params", none]) == 1
    assert f"failed: {rel}: {says}" in capsys.readouterr().err
    assert main(["export", "--input", str(tmp_path / "tree"), "--output", str(tmp_path / "png"),
                 "--workers", "1", "--params", none]) == 1
    assert f"failed: {says}" in capsys.readouterr().err
    reads = [lambda: _read_for_store(path), lambda: read_seg(path)]
    if damage == "undefined transfer syntax":  # to-seg checks identities on the header only
        record = tmp_path / "pngs" / "provenance" / "SP1_1.2.3.4.json"   # as export writes it
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"image": "SP1_1.2.3.4.png", "source": rel,
                                      "sop_instance_uid": "1.2.3.4"}))
        reads.append(lambda: verify_identities(["SP1_1.2.3.4.png"], tmp_path / "tree",
                                                tmp_path / "pngs", {}, b""))
        reads.append(lambda: seg_reference(path, "1.2.3.4"))   # to-sr reads SEG headers
    for read in reads:
        with pytest.raises(InvalidDicomError) as err:
            read()
        assert says in err.value.message and err.value.file == str(path)
