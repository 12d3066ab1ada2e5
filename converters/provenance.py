"""Provenance records: the JSON that ``export`` writes beside each PNG,
``<png folder>/provenance/<stem>.json`` (source pseudonym UIDs, size, bit depth, pixel
spacing in mm (row, column), the transforms applied). Written by :mod:`converters.export`;
read downstream where a PNG's physical size matters (clinical measures in millimetres).

Records are data: read defensively (a missing, unreadable or odd record means "unknown",
never a crash), and the record's path is built from the image name through
:func:`converters.paths.confined`.
"""
from __future__ import annotations

import math
from pathlib import Path

from converters.errors import SpinepipeError
from converters.paths import confined
from converters.records import json_value, open_input


def record_path(png_dir: str | Path, image_name: str) -> Path:
    """Where the record of ``image_name`` (a PNG file name) lives."""
    return confined(png_dir, "provenance", f"{Path(image_name).stem}.json")


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
