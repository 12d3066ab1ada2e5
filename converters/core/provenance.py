"""The exported PNGs' names and provenance records: the one owner of that layout.

An exported PNG is ``<pseudonym>_<SOP Instance UID>.png`` (:func:`png_name`; the pseudonym is
the patient's, :func:`patient_of`: convert groups images by it, split keeps a patient in one
fold). Its record is the JSON ``export`` writes beside it, ``<png folder>/provenance/<stem>.json``
(:func:`record_path`: the image name, the source's path in the anonymized tree, pseudonym UIDs,
size, bit depth, pixel spacing in mm (row, column), the transforms applied). Written by
:mod:`converters.dicom.export`; read by to-seg (the source of each image), the phantom's
annotator (the new SOP Instance UID of each image) and wherever a PNG's physical size matters
(clinical measures in millimetres).

Records are data: read defensively (a missing, unreadable or odd record means "unknown", never a
crash), and the record's path is built from the image name through
:func:`converters.core.paths.confined`.
"""
from __future__ import annotations

import math
from pathlib import Path

from converters.core.errors import SpinepipeError
from converters.core.paths import confined
from converters.core.records import json_value, open_input


#: the records' folder inside the PNG folder
RECORDS = "provenance"


def png_name(pseudonym: str, sop_instance_uid: str) -> str:
    """The exported PNG's name (both parts checked by the caller:
    :func:`converters.core.paths.check_name` / ``check_uid``)."""
    return f"{pseudonym}_{sop_instance_uid}.png"


def patient_of(file_name: str) -> str:
    """The patient pseudonym an exported PNG's name starts with (the whole stem for a name
    without ``_``: an image from elsewhere is its own patient)."""
    stem = Path(file_name).stem
    return stem.split("_", 1)[0] if "_" in stem else stem


def record_path(png_dir: str | Path, image_name: str) -> Path:
    """Where the record of ``image_name`` (a PNG file name) lives."""
    return confined(png_dir, RECORDS, f"{Path(image_name).stem}.json")


def record_paths(png_dir: str | Path) -> list[Path]:
    """Every record of a PNG folder, sorted."""
    return sorted((Path(png_dir) / RECORDS).glob("*.json"))


def read_record(png_dir: str | Path, image_name: str) -> dict | None:
    """The record of an exported PNG, or None when there is none (or it does not parse)."""
    try:
        with open_input(record_path(png_dir, image_name)) as fh:  # never a FIFO, never deep
            data = json_value(fh.read().decode("utf-8"))
    except (OSError, ValueError, SpinepipeError):
        return None
    return data if isinstance(data, dict) else None


def pixel_spacing(record: dict | None) -> tuple[float, float] | None:
    """(row, column) spacing in mm from a record; None when absent or not two positive
    finite numbers."""
    value = (record or {}).get("pixel_spacing_mm")
    if not isinstance(value, list) or len(value) != 2:
        return None
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and 0 < v < 100 for v in (row, col)):
        return None
    return row, col
