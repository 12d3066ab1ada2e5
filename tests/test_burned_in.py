"""Burned-in text is looked for by OCR (converters/dicom/burned_in.py), not trusted to a flag.

Real vendor radiographs (the full-size Philips and Fuji CR of pydicom-data, which carry no
BurnedInAnnotation) and phantom radiographs, with and without a name written into the pixels
as a modality would (cv2.putText, white as displayed, in a corner), go through the real
Tesseract (Debian's tesseract-ocr). Detection rates over many images and the time per image
are measured in benchmarks/bench_anonymize.py --ocr-eval, not here.
"""
from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from conftest import dicom_image

from converters.phantom.anatomy import MAX_VALUE, render
from converters.dicom.burned_in import (TextBox, blank_boxes, check_ocr_available,
                                        find_burned_in_text)
from converters.core.errors import InvalidImageError, SpinepipeError
from converters.phantom.plan import PhantomConfig, plan_cases
from converters.phantom.writing import burn_in

NAME = "DOE^JOHN 12345 01.02.1960"


def real_cr(name: str) -> tuple[np.ndarray, str]:
    """Stored pixels and photometric interpretation of a pydicom-data CR object."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} not found: pydicom-data (test extras) is not installed"
    ds = pydicom.dcmread(path)
    return ds.pixel_array, str(ds.PhotometricInterpretation)


def burn_corner(pixels: np.ndarray, photometric: str, text: str = NAME, *,
                corner: str = "bottom-left") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A copy with ``text`` written white-as-displayed (the stored minimum in MONOCHROME1),
    about 40 pixels tall, 20 pixels in from ``corner``; and the text's box (x, y, w, h)."""
    img = pixels.copy()
    rows, cols = img.shape
    white = int(img.min()) if photometric == "MONOCHROME1" else int(img.max())
    black = int(img.max()) if photometric == "MONOCHROME1" else int(img.min())
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 1.4, 3
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    x = 20 if corner.endswith("left") else cols - w - 20
    y = h + 20 if corner.startswith("top") else rows - base - 20
    box = (x, y - h, w, h + base)
    # a label is drawn on a dark band when the corner is bright, as modalities do
    img[y - h - 6:y + base + 6, x - 6:x + w + 6] = black
    cv2.putText(img, text, (x, y), font, scale, white, thick, cv2.LINE_AA)
    return img, box


def covered(boxes: list[TextBox], box: tuple[int, int, int, int]) -> float:
    """The share of ``box`` that the found boxes cover."""
    x, y, w, h = box
    mask = np.zeros((y + h + 1, x + w + 1), bool)
    for b in boxes:
        mask[b.y:b.y + b.h, b.x:b.x + b.w] = True
    return float(mask[y:y + h, x:x + w].mean())


@pytest.mark.parametrize("name", [
    "RG3_UNCR.dcm",   # Fuji CR, 1760 x 1760, 10 bits, MONOCHROME1, a lead "R" marker
    "RG1_UNCR.dcm",   # Philips CR, 1955 x 1841, 15 bits, MONOCHROME1, a chest
])
def test_name_burned_into_a_real_cr_is_found_and_blanked(name):
    pixels, photometric = real_cr(name)
    assert find_burned_in_text(pixels) == []  # the same image without text: nothing found
    img, box = burn_corner(pixels, photometric)
    found = find_burned_in_text(img)
    assert found, "the burned-in name was not found"
    assert covered(found, box) > 0.95  # the boxes hold the whole line, not a part of it
    assert any("12345" in b.text or "JOHN" in b.text for b in found)
    assert max(b.confidence for b in found) >= 70
    before = img.copy()
    blanked = blank_boxes(img, found)
    assert np.array_equal(img, before)  # the input is not modified
    assert blanked.dtype == img.dtype and blanked.shape == img.shape
    assert find_burned_in_text(blanked) == []  # OCR finds nothing after blanking
    x, y, w, h = box
    assert np.all(blanked[y:y + h, x:x + w] == img.min())  # every text pixel is gone
    outside = np.ones(img.shape, bool)
    for b in found:
        outside[b.y:b.y + b.h, b.x:b.x + b.w] = False
    assert np.array_equal(blanked[outside], img[outside])  # nothing else changed


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-right"])
def test_every_corner_of_a_real_cr_is_searched(corner):
    pixels, photometric = real_cr("RG3_UNCR.dcm")
    img, box = burn_corner(pixels, photometric, "MUELLER HANS PID0004711", corner=corner)
    found = find_burned_in_text(img)
    assert found and covered(found, box) > 0.95


@pytest.mark.parametrize("monochrome1", [False, True])
@pytest.mark.parametrize("size", [(256, 640), (1100, 2870)])  # the demo's, the study's largest
def test_the_phantoms_burned_in_label_is_found_in_either_polarity(size, monochrome1):
    cfg = PhantomConfig(n=1, seed=4, width=size[0], height=size[1])
    pixels, _, _ = render(plan_cases(cfg)[0])
    stored = (lambda a: MAX_VALUE - a) if monochrome1 else (lambda a: a)
    assert find_burned_in_text(stored(pixels)) == []
    # the phantom's label: three lines written close together in the top-left corner
    burn_in(pixels, ["KOVACS VERA", "PID00400000", "19571231"])
    found = find_burned_in_text(stored(pixels))
    assert len(found) == 3, found  # one box per line, not one for the block
    assert [b.y for b in found] == sorted(b.y for b in found)
    assert find_burned_in_text(blank_boxes(stored(pixels), found)) == []


def test_the_short_lines_of_a_label_are_blanked_with_it():
    # an age and sex under the name is too short to be read as text on its own; blanking
    # the label must still take it (every pixel the label changed is inside a found box)
    cfg = PhantomConfig(n=1, seed=5, width=1100, height=2870)
    pixels, _, _ = render(plan_cases(cfg)[0])
    labelled = pixels.copy()
    burn_in(labelled, ["WAGNER UWE", "PID00500000", "F 64Y"])
    found = find_burned_in_text(labelled)
    inside = np.zeros(pixels.shape, bool)
    for b in found:
        inside[b.y:b.y + b.h, b.x:b.x + b.w] = True
    assert len(found) == 3
    assert np.all(inside[labelled != pixels])


def test_a_single_letter_side_marker_is_not_text():
    # RG3 carries a lead "R" marker; a lone letter names nobody and must not quarantine
    pixels, photometric = real_cr("RG3_UNCR.dcm")
    img, _ = burn_corner(pixels, photometric, "L", corner="top-left")
    assert find_burned_in_text(img) == []


def test_blank_boxes_pads_and_clips_to_the_image():
    pixels = np.full((50, 80), 700, np.uint16)
    pixels[0, 0] = 3
    out = blank_boxes(pixels, [[70, 40, 30, 30], TextBox(-5, -5, 10, 10, "x", 90.0)], pad=2)
    assert out.dtype == np.uint16 and out.shape == pixels.shape
    assert np.all(out[38:, 68:] == 3) and np.all(out[:7, :7] == 3)
    assert out[37, 67] == 700 and out[7, 7] == 700 and out[20, 30] == 700
    assert np.all(blank_boxes(pixels, [[10, 10, 5, 5]], fill=9)[10:15, 10:15] == 9)


@pytest.mark.parametrize("bad", [
    np.zeros((2, 64, 64), np.uint16),   # a multi-frame array
    np.zeros((64, 64, 3), np.uint8),    # a colour image
    np.zeros((0, 64), np.uint16),       # no rows
])
def test_what_is_not_one_grey_frame_is_a_one_line_error(bad):
    with pytest.raises(InvalidImageError, match="one frame"):
        find_burned_in_text(bad)
    if bad.size:
        with pytest.raises(InvalidImageError, match="one frame"):
            blank_boxes(bad, [])


def test_a_missing_tesseract_is_a_one_line_error(monkeypatch):
    from converters.dicom import burned_in

    pixels, photometric = real_cr("RG3_UNCR.dcm")
    img, _ = burn_corner(pixels, photometric)
    assert check_ocr_available().startswith("5.")  # Debian's tesseract-ocr 5
    monkeypatch.setattr(burned_in, "TESSERACT", "/nonexistent/tesseract")
    with pytest.raises(SpinepipeError, match="tesseract-ocr") as err:
        find_burned_in_text(img)
    assert "\n" not in str(err.value)
    with pytest.raises(SpinepipeError, match="tesseract-ocr"):
        check_ocr_available()


# --------------------------------------------------------------------------------------------
# through anonymize: the flag is optional in CR and not trusted


def _cr_with_name(tmp_path, flag: str | None):
    """RG3 (Fuji CR) with the name burned in, BurnedInAnnotation absent or as given."""
    path = get_testdata_file("RG3_UNCR.dcm")
    assert path is not None, "RG3_UNCR.dcm not found: pydicom-data (test extras) is not installed"
    ds = pydicom.dcmread(path)
    img, box = burn_corner(ds.pixel_array, str(ds.PhotometricInterpretation))
    ds.PixelData = np.ascontiguousarray(img).tobytes()
    if "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    if flag is not None:
        ds.BurnedInAnnotation = flag
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "cr.dcm")
    return src, box


@pytest.mark.parametrize("flag", [None, "NO"])
def test_anonymize_quarantines_a_cr_whose_name_is_burned_in_without_the_flag(tmp_path, flag):
    from pipeline.cli import main

    src, _ = _cr_with_name(tmp_path, flag)
    code = main(["anonymize", "-i", str(src), "-o", str(tmp_path / "out"), "--private",
                 str(tmp_path / "private"), "--params", "/nonexistent.yaml", "--quiet",
                 "--workers", "1"])
    assert code == 0
    assert list((tmp_path / "out").rglob("*.dcm")) == []
    report = (tmp_path / "private" / "anonymize_report.json").read_text()
    assert "quarantined" in report and "burned-in text found by OCR" in report
    assert "JOHN" not in report and "12345" not in report  # the text read is not recorded


def test_anonymize_blank_mode_blanks_what_ocr_found(tmp_path):
    from converters.dicom.deid_table import AnonymizeConfig
    from converters.dicom.anonymize import anonymize_tree
    from converters.dicom.ledger import load_or_create_salt, prepare_private

    src, box = _cr_with_name(tmp_path, None)
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig(burned_in="blank"))
    assert report.counts == {"anonymized": 1}
    out = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert find_burned_in_text(out.pixel_array) == []
    x, y, w, h = box
    assert len(np.unique(out.pixel_array[y:y + h, x:x + w])) == 1  # the label is gone


def test_anonymize_with_the_flag_yes_skips_ocr_and_quarantines(tmp_path):
    from converters.dicom.deid_table import AnonymizeConfig
    from converters.dicom.anonymize import anonymize_tree
    from converters.dicom.ledger import load_or_create_salt, prepare_private

    src, _ = _cr_with_name(tmp_path, "YES")
    priv = prepare_private(tmp_path / "private")
    report = anonymize_tree(src, tmp_path / "out", priv, load_or_create_salt(priv),
                            AnonymizeConfig())
    assert report.counts == {"quarantined": 1}
    assert [r["reason"] for r in report.private_rows.values()] == ["BurnedInAnnotation YES"]


def test_ocr_leaves_the_environment_of_later_children_alone(monkeypatch):
    """OMP_THREAD_LIMIT=1 is for the tesseract child only: left behind, it reached a torch
    training started later from the same process, which hung in oneDNN's OpenMP barrier."""
    import os

    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    img, _ = burn_corner(*real_cr("RG3_UNCR.dcm"))
    assert find_burned_in_text(img)
    assert "OMP_THREAD_LIMIT" not in os.environ


# --------------------------------------------------------------------------------------------
# the pixels OCR reads are pydicom's, without its copy where that is exact


def _cases():
    """name -> (dataset, whether the no-copy view applies)."""
    from pydicom.uid import ExplicitVRBigEndian

    base = np.arange(64, dtype=np.uint16) * 61 % 4096
    high = base.copy()
    high[5] |= 0x8000  # an overlay bit above BitsStored: pydicom masks it away
    big = dicom_image(PixelData=base.astype(">u2").tobytes())
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return {
        "12 of 16 bits": (dicom_image(PixelData=base.tobytes()), True),
        "full 16 bits": (dicom_image(PixelData=(base * 16).tobytes(), BitsStored=16,
                                     HighBit=15), True),
        "8 bits": (dicom_image(PixelData=base.astype(np.uint8).tobytes(), BitsAllocated=8,
                               BitsStored=8, HighBit=7), True),
        "bit above BitsStored": (dicom_image(PixelData=high.tobytes()), False),
        "signed": (dicom_image(PixelData=(base.astype(np.int16) - 2048).tobytes(),
                               PixelRepresentation=1), False),
        "two frames": (dicom_image(size=4, PixelData=base.tobytes()[:64], NumberOfFrames=2),
                       False),
        "big endian": (big, False),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_ocr_reads_exactly_the_pixels_pydicom_decodes(name):
    from converters.dicom.deid_pixels import _native_view, stored_pixels

    ds, view_applies = _cases()[name]
    expected = ds.pixel_array.copy()
    ds = pydicom.dcmread(_roundtrip(ds))  # as anonymize reads it: no cached array
    assert (_native_view(ds) is not None) == view_applies
    got = stored_pixels(ds, "x.dcm")
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    if view_applies:
        assert not got.flags.writeable  # OCR only reads: a write would be a bug, and fails


def _roundtrip(ds):
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf
