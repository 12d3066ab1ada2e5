"""Reading DICOM files: the one reader every stage uses (retrieve's store, anonymize, export,
to-seg, SEG reading), so a damaged file is the same one-line error everywhere.

:func:`read_dicom` takes a path (opened as a regular file only: a FIFO or device put in an archive
is refused, never waited on) or the bytes of one object, and returns pydicom's dataset of a Part 10
file, or of a raw dataset without preamble and file meta as some archives store them (recognised by
its SOP Class UID). It raises :class:`~converters.core.errors.InvalidDicomError` naming the file
(and the tag where one is to blame) for:

- ``not a DICOM file (...)``: neither of the above;
- ``truncated: the file ends inside <element> (n of m bytes)``: the last element's value is
  shorter than its declared length (pydicom reads what is there and says nothing);
- ``no data set after the file meta (cut short)``: nothing but a header (a file cut at an
  element boundary further in cannot be told from a short object: the stage then names the
  attribute it misses);
- ``transfer syntax '...' is not one of the standard's``: a Transfer Syntax UID the standard
  does not define (empty, ``1.2.3``, a path; :func:`transfer_syntax`);
- ``unreadable DICOM (<pydicom's error>)``: anything else pydicom refuses while reading.

Element values are decoded by pydicom when first used, not here: a malformed value in an
element nobody reads costs nothing.
"""
from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as _PydicomInvalid
from pydicom.uid import UID

from converters.core.errors import InvalidDicomError, SpinepipeError
from converters.core.records import NotRegularFile, open_input


def read_dicom(source: str | Path | bytes, *, name: str | Path | None = None,
               header_only: bool = False) -> Dataset:
    """The dataset of a DICOM file (a path, or an object's bytes; ``name`` is what errors
    call it, by default the path); ``header_only`` stops before the pixel data."""
    name = str(name if name is not None else source if not isinstance(source, bytes)
               else "DICOM object")
    try:
        if isinstance(source, bytes):
            return _read(BytesIO(source), name, header_only)
        with open_input(source) as fh:
            return _read(fh, name, header_only)
    except SpinepipeError:
        raise
    except NotRegularFile as exc:
        raise InvalidDicomError(exc.strerror, file=name) from None
    except FileNotFoundError:
        raise InvalidDicomError("file not found", file=name) from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise InvalidDicomError(f"unreadable DICOM ({type(exc).__name__}: {exc})"
                                .splitlines()[0][:200], file=name) from None


def _read(fh: BinaryIO, name: str, header_only: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(fh, force=False, stop_before_pixels=header_only)
    except _PydicomInvalid:
        fh.seek(0)
        try:
            ds = pydicom.dcmread(fh, force=True, stop_before_pixels=header_only)
        except Exception as exc:
            raise InvalidDicomError(f"not a DICOM file ({type(exc).__name__})",
                                    file=name) from None
        if "SOPClassUID" not in ds:
            raise InvalidDicomError("not a DICOM file (no DICM preamble, no SOP Class UID)",
                                    file=name) from None
    transfer_syntax(ds, name)
    if not len(ds):
        raise InvalidDicomError("no data set after the file meta (cut short)", file=name)
    return _check_complete(ds, name)


def transfer_syntax(ds: Dataset, file: str | Path = "") -> UID | None:
    """The file's Transfer Syntax UID, ``None`` when it has no file meta; one the standard
    does not define (empty, ``1.2.3``, a path) is :class:`InvalidDicomError`."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return None
    uid = UID(str(ts))
    if not uid.is_transfer_syntax:
        raise InvalidDicomError(f"transfer syntax {str(ts)[:64]!r} is not one of the "
                                "standard's", file=file, tag="(0002,0010)")
    return uid


def _check_complete(ds: Dataset, name: str) -> Dataset:
    """:class:`InvalidDicomError` when the file ends inside its last element (a value shorter
    than its declared length)."""
    if not len(ds):
        return ds
    last = max(ds.keys())
    raw = ds.get_item(last)
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if isinstance(value, (bytes, bytearray)) and length not in (None, 0xFFFFFFFF) \
            and len(value) < length:
        keyword = keyword_for_tag(last) or f"({last.group:04X},{last.element:04X})"
        raise InvalidDicomError(f"truncated: the file ends inside {keyword} ({len(value)} "
                                f"of {length} bytes)", file=name,
                                tag=f"({last.group:04X},{last.element:04X})")
    return ds
