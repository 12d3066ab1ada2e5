"""VIA's CSV export (*Annotation > Export Annotations (as csv)*) read as VIA writes it: one row per
region (an image without regions: one row with empty region cells), each cell a JSON value that
VIA built with ``JSON.stringify`` (so a value never set is a bare ``undefined``), quoted as
VIA quotes it; a field is at most :data:`MAX_CSV_FIELD` characters. Part of
:func:`converters.annotations.via.read_via`, which dispatches here for ``*.csv``.
"""
from __future__ import annotations

from pathlib import Path

from converters.core.errors import InvalidViaError
from converters.core.records import (MAX_JSON_DEPTH, JsonTooDeep, NotRegularFile, json_value,
                                     open_input)
from converters.annotations.via import (AnnotatedImage, check_region_count, image_file_attributes,
                                        region_from_shape, recorded_size)


#: characters accepted in one CSV field (a 10,000-point polygon of 5-digit floats: ~300,000)
MAX_CSV_FIELD = 1_048_576


def _js_undefined_to_null(text: str) -> str:
    """VIA builds its CSV cells with ``JSON.stringify`` per value, which turns a value that
    was never set (a dropdown never picked) into a bare JavaScript ``undefined``:
    ``{"class":undefined}``. Read it as JSON ``null`` ("not set"); strings are left alone."""
    if "undefined" not in text:
        return text
    out, i, in_string = [], 0, False
    while i < len(text):
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\":
                out.append(text[i + 1:i + 2])
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif text.startswith("undefined", i):
            out.append("null")
            i += len("undefined") - 1
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def read_via_csv(path: Path) -> list[AnnotatedImage]:
    """A VIA 2 CSV export; fields up to :data:`MAX_CSV_FIELD` characters (module docstring)."""
    import csv

    limit = csv.field_size_limit(MAX_CSV_FIELD)
    try:
        with _csv_open(path) as fh:
            reader = csv.DictReader(fh)
            try:
                return _csv_rows(reader, path)
            except csv.Error as exc:
                what = (f"a field longer than {MAX_CSV_FIELD:,} characters"
                        if "field larger than field limit" in str(exc) else str(exc))
                # line_num counts the lines parsed before the one that failed
                raise InvalidViaError(f"malformed CSV at line {reader.line_num + 1}: {what}",
                                      file=path) from None
    finally:
        csv.field_size_limit(limit)


def _csv_rows(reader, path: Path) -> list[AnnotatedImage]:
    import json

    images: dict[str, AnnotatedImage] = {}
    need = {"filename", "file_size", "region_shape_attributes", "region_attributes"}
    missing = need - set(reader.fieldnames or [])
    if missing:
        raise InvalidViaError(f"VIA CSV without column '{sorted(missing)[0]}'", file=path)
    for line, row in enumerate(reader, 2):
        if not row["filename"]:
            raise InvalidViaError(f"CSV line {line} without a filename", file=path)
        img = images.setdefault(row["filename"], AnnotatedImage(
            row["filename"], recorded_size(row["file_size"], path, row["filename"]), [], str(path)))
        try:
            shape = json_value(_js_undefined_to_null(row["region_shape_attributes"] or "{}"))
            attrs = json_value(_js_undefined_to_null(row["region_attributes"] or "{}"))
            file_attrs = json_value(_js_undefined_to_null(row.get("file_attributes") or "{}"))
        except json.JSONDecodeError as exc:
            raise InvalidViaError(f"malformed JSON in CSV line {line}: {exc.msg}",
                                  file=path, image=row["filename"]) from None
        except JsonTooDeep:
            raise InvalidViaError(f"JSON in CSV line {line} nested deeper than "
                                  f"{MAX_JSON_DEPTH} levels", file=path,
                                  image=row["filename"]) from None
        if file_attrs and not img.file_attributes:
            img.file_attributes.update(image_file_attributes(file_attrs, path, row["filename"]))
        if not isinstance(shape, dict):
            raise InvalidViaError(f"region_shape_attributes in CSV line {line} is not an "
                                  "object", file=path, image=row["filename"])
        if shape:
            check_region_count(len(img.regions) + 1, path, row["filename"])
            img.regions.append(region_from_shape(len(img.regions), shape, attrs, path,
                                                  row["filename"]))
    return list(images.values())


class _csv_open:
    """Open a CSV as UTF-8 (BOM tolerated); decoding errors surface while reading, so the
    caller turns them into :class:`InvalidViaError` (see :func:`read_via`)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.fh = open_input(self.path, "r", newline="", encoding="utf-8-sig")
        except NotRegularFile as exc:
            raise InvalidViaError(exc.strerror, file=self.path) from None
        except FileNotFoundError:
            raise InvalidViaError("VIA file not found", file=self.path) from None
        except OSError as exc:
            raise InvalidViaError(f"cannot read the VIA file ({exc.strerror})",
                                  file=self.path) from None
        return self.fh

    def __exit__(self, *exc) -> None:
        self.fh.close()
