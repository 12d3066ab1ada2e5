"""Pixel data in de-identification: text markers in encapsulated frames, the checks before
anything is decoded, the pixels OCR reads and the regions it blanks.

``R`` pixel data. Native pixels are kept as they are. From encapsulated pixel data every
comment (JPEG and JPEG 2000 COM) and application segment (APP0-APP15) is removed from each
frame, with JP2 boxes around a JPEG 2000 codestream and any bytes after the end-of-image
marker. Kept, because decoders need them and each is checked to be exactly its fixed size
(no room for text): a JFIF APP0 without thumbnail, Adobe APP14 (colour transform), HP's
APP8 ``mrfx`` in JPEG-LS (colour transform). The cleaned frames must decode to the very
pixels of the original, else the object fails. RLE holds no text fields; other compressed
syntaxes (MPEG, H.264, HEVC, JPEG XL) are refused.

Before anything is decoded or written: a file that ends inside an element is truncated (an error
naming the file, never a "non-image" skip); the pixel count the header and each codestream claim
must fit :data:`converters.dicom.pixels.MAX_PIXELS` (64 megapixels,
:func:`converters.dicom.pixels.check_pixel_budget`); uncompressed pixel data must hold every frame,
compressed pixel data must decode.

Arrays: rows x columns (x samples) of stored values, as pydicom decodes them; a region is
``[x, y, width, height]`` in pixels, x to the right, y down, from the top-left pixel.
"""
from __future__ import annotations

import struct
from typing import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.uid import ExplicitVRLittleEndian

from converters.dicom.read import transfer_syntax
from converters.core.errors import InvalidDicomError, UnsupportedDicomError
from converters.dicom.pixels import MAX_PIXELS, check_pixel_budget


_JPEG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70"})


_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})


_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                  "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})


_RLE = frozenset({"1.2.840.10008.1.2.5"})


def _app_needed(marker: int, segment: bytes, ls: bool) -> bool:
    """An application segment a decoder needs, of exactly its fixed size (module docstring)."""
    payload = segment[4:]
    if marker == 0xE0:   # JFIF 1.0x header without thumbnail
        return len(segment) == 18 and payload[:5] == b"JFIF\0" and payload[12:14] == b"\0\0"
    if marker == 0xEE:   # Adobe: colour transform
        return len(segment) == 16 and payload[:5] == b"Adobe"
    return ls and marker == 0xE8 and len(segment) == 9 and payload[:4] == b"mrfx"


def _scan_end(data: bytes, i: int, ls: bool) -> int:
    """Where the entropy-coded data starting at ``i`` ends (the next marker)."""
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= len(data):
            return len(data)
        nxt = data[j + 1]
        if 0xD0 <= nxt <= 0xD7 or (nxt < 0x80 if ls else nxt == 0x00):
            i = j + 2  # restart marker or stuffed byte: still data
            continue
        return j


def _clean_jpeg(data: bytes, ls: bool = False) -> tuple[bytes, list[str]]:
    """A JPEG / JPEG-LS codestream without COM and APPn segments (but those a decoder needs)
    and without bytes after EOI; and what was removed."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no start-of-image marker")
    out, removed, i, n = [data[:2]], [], 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = data[i + 1] if i + 1 < n else 0xD9
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            i += 2
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out.append(data[i:i + 2])
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > n or end < i + 4:
            raise ValueError(f"segment 0xFF{marker:02X} runs past the end")
        segment = data[i:end]
        if marker == 0xFE or (0xE0 <= marker <= 0xEF and not _app_needed(marker, segment, ls)):
            removed.append("COM" if marker == 0xFE else f"APP{marker - 0xE0}")
        else:
            out.append(segment)
        i = end
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            j = _scan_end(data, i, ls)
            out.append(data[i:j])
            i = j
    if data[i:].strip(b"\0"):
        removed.append("bytes after the end of image")
    return (b"".join(out), removed) if removed else (data, [])


def _jp2_codestream(data: bytes) -> bytes:
    """The codestream of a JP2 file (its ``jp2c`` box)."""
    i = 0
    while i + 8 <= len(data):
        size, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        head = 8
        if size == 1:
            size, head = int.from_bytes(data[i + 8:i + 16], "big"), 16
        elif size == 0:
            size = len(data) - i
        if kind == b"jp2c":
            return data[i + head:i + size]
        if size < head:
            break
        i += size
    raise ValueError("a JP2 file without a codestream box")


def _j2k_segments(data: bytes, i: int, stop: bytes, removed: list[str]) -> tuple[list[bytes], int]:
    """The marker segments from ``i`` up to the marker ``stop``, COM segments left out."""
    kept = []
    while data[i:i + 2] != stop:
        if i + 4 > len(data) or data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > len(data) or end < i + 4:
            raise ValueError("a marker segment runs past the end")
        if data[i:i + 2] == b"\xff\x64":
            removed.append("COM")
        else:
            kept.append(data[i:end])
        i = end
    return kept, i


def _clean_j2k(data: bytes) -> tuple[bytes, list[str]]:
    """A JPEG 2000 codestream without COM segments (main and tile-part headers), JP2 boxes
    or bytes after EOC; and what was removed."""
    removed: list[str] = []
    original = data
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        data = _jp2_codestream(data)
        removed.append("JP2 boxes")
    if data[:2] != b"\xff\x4f":
        raise ValueError("no start-of-codestream marker")
    header, i = _j2k_segments(data, 2, b"\xff\x90", removed)
    tiles, in_tiles = [], []
    while data[i:i + 2] == b"\xff\x90":
        psot = int.from_bytes(data[i + 6:i + 10], "big")
        end = i + psot if psot else len(data) - (2 if data.endswith(b"\xff\xd9") else 0)
        segments, j = _j2k_segments(data, i + 12, b"\xff\x93", in_tiles)
        part = data[i:i + 12] + b"".join(segments) + data[j:end]
        if psot:
            part = part[:6] + len(part).to_bytes(4, "big") + part[10:]
        tiles.append(part)
        i = end
    if data[i:i + 2] != b"\xff\xd9" or data[i + 2:].strip(b"\0"):
        removed.append("bytes after the end of codestream")
    if not removed and not in_tiles:
        return original, []
    if in_tiles:  # tile-part lengths changed: the optional TLM segment would be wrong
        header = [s for s in header if s[:2] != b"\xff\x55"]
    return b"\xff\x4f" + b"".join(header) + b"".join(tiles) + b"\xff\xd9", removed + in_tiles


def _cleaner(ts: str, file: str) -> Callable[[bytes], tuple[bytes, list[str]]] | None:
    if ts in _JPEG:
        return _clean_jpeg
    if ts in _JPEG_LS:
        return lambda frame: _clean_jpeg(frame, ls=True)
    if ts in _J2K:
        return _clean_j2k
    if ts in _RLE:
        return None
    raise UnsupportedDicomError(f"cannot check {getattr(ts, 'name', ts)} pixel data for text "
                                "(only JPEG, JPEG-LS, JPEG 2000 and RLE)", file=file,
                                tag="(7FE0,0010)")


def clean_pixel_markers(ds: Dataset, decoded: np.ndarray | None, file: str = "") -> list[str]:
    """Remove comment and application segments from every frame of encapsulated pixel data
    (module docstring); the result must decode to ``decoded``. Returns what was removed."""
    ts = transfer_syntax(ds, file)
    if ts is None or not ts.is_encapsulated or "PixelData" not in ds:
        return []
    clean = _cleaner(ts, file)
    if clean is None:
        return []
    from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames

    frames_n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=frames_n))
        cleaned = [clean(f) for f in frames]
    except (ValueError, IndexError, struct.error) as exc:
        raise InvalidDicomError(f"cannot read the {ts.name} codestream to remove text "
                                f"markers: {exc}", file=file, tag="(7FE0,0010)") from None
    removed = sorted({r for _, rs in cleaned for r in rs})
    if not removed:
        return []
    new = [c for c, _ in cleaned]
    if "ExtendedOffsetTable" in ds:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = \
            encapsulate_extended(new)
    else:
        ds.PixelData = encapsulate(new, has_bot=len(new) > 1)
    _same_pixels(ds, decoded, file)
    return removed


def _same_pixels(ds: Dataset, decoded: np.ndarray | None, file: str) -> None:
    try:
        after = ds.pixel_array
    except Exception as exc:  # decoders raise many types on corrupt streams
        raise InvalidDicomError(f"pixel data without its text markers does not decode: "
                                f"{exc}".splitlines()[0], file=file, tag="(7FE0,0010)") from None
    if decoded is None or after.shape != decoded.shape or not np.array_equal(after, decoded):
        raise InvalidDicomError("removing the text markers of the pixel data changed the "
                                "pixels: refused", file=file, tag="(7FE0,0010)")


def _native_view(ds: Dataset) -> np.ndarray | None:
    """A read-only view of native (uncompressed, little-endian) pixel data, without a copy,
    when it equals what pydicom decodes: one frame, one sample, unsigned 8 or 16 bits, no bit
    set above BitsStored (pydicom would mask those). None otherwise. pydicom's own array costs
    a copy and a masking pass of the whole image (a third of the OCR's time on a CR), and OCR
    only reads the pixels."""
    ts = transfer_syntax(ds)
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored", bits))
        simple = (int(ds.get("PixelRepresentation", 0)) == 0 and bits in (8, 16)
                  and 0 < stored <= bits and int(ds.get("SamplesPerPixel", 1) or 1) == 1
                  and _frame_count(ds) == 1)
    except (AttributeError, TypeError, ValueError, BytesLengthException):
        return None
    data = ds.get("PixelData")
    if not simple or ts is None or ts.is_encapsulated or not ts.is_little_endian or \
            not isinstance(data, bytes) or len(data) < rows * cols * bits // 8:
        return None
    view = np.frombuffer(data, dtype=np.uint8 if bits == 8 else "<u2", count=rows * cols)
    if stored < bits and int(view.max()) >> stored:
        return None
    return view.reshape(rows, cols)


def stored_pixels(ds: Dataset, file: str) -> np.ndarray:
    """The uncompressed pixel data as an array (read only: :func:`_native_view` where it
    applies); a header pydicom cannot use (an unreadable NumberOfFrames, as
    check_pixel_data allows) read as one frame of Rows x Columns."""
    view = _native_view(ds)
    if view is not None:
        return view
    try:
        return ds.pixel_array
    except (ValueError, TypeError, AttributeError, NotImplementedError):
        pass
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
        arr = np.frombuffer(ds.PixelData, dtype=dtype, count=rows * cols * samples)
        return arr.reshape((rows, cols, samples) if samples > 1 else (rows, cols))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InvalidDicomError("pixel data cannot be read for the burned-in text check",
                                file=file, tag="(7FE0,0010)") from None


def grey_frames(ds: Dataset, pixels: np.ndarray) -> list[np.ndarray]:
    """The 2-D planes OCR reads: each frame, colour averaged to grey (the array itself when
    it is one grey frame)."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = _frame_count(ds)
    arr = pixels
    if samples > 1:
        arr = arr.mean(axis=-1).astype(pixels.dtype)
    if frames > 1 and arr.ndim == 3:
        return list(arr)
    return [arr]


def blank_pixels(ds: Dataset, regions: list[list[int]], file: str) -> None:
    arr = ds.pixel_array.copy()
    if arr.ndim != 2:
        raise InvalidDicomError("cannot blank burned-in text of a multi-frame or colour image",
                                file=file)
    fill = arr.min()
    for x, y, w, h in regions:
        arr[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = fill
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.BurnedInAnnotation = "NO"


def _frame_count(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, BytesLengthException):
        return 1  # unreadable frame count (seen in real files): at least one whole frame


def check_pixel_data(ds: Dataset, file: str = "",
                     max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """Raise :class:`InvalidDicomError` unless the pixel data is complete: uncompressed, its
    length holds every frame; compressed (encapsulated), it decodes (the decoded pixels are
    returned). The pixel count is checked against ``max_pixels`` before any decoding."""
    if "PixelData" not in ds:
        return None  # float pixel data: rare, parametric maps; nothing to check here
    ts = transfer_syntax(ds, file)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError, BytesLengthException):
        raise InvalidDicomError("pixel data without valid Rows, Columns and BitsAllocated",
                                file=file, tag="(0028,0010)") from None
    frames = _frame_count(ds)
    if min(rows, cols, bits, samples, frames) < 1:
        raise InvalidDicomError(f"pixel data of {cols}x{rows} pixels, {samples} sample(s), "
                                f"{bits} bits, {frames} frame(s)", file=file, tag="(0028,0010)")
    if ts is not None and ts.is_encapsulated:
        check_pixel_budget(ds, max_pixels, file)
        try:
            return ds.pixel_array
        except Exception as exc:  # decoders raise many types on corrupt streams
            raise InvalidDicomError(f"compressed pixel data does not decode ({ts.name}): "
                                    f"{exc}".splitlines()[0], file=file,
                                    tag="(7FE0,0010)") from None
    expected = (rows * cols * samples * frames * bits + 7) // 8
    got = len(ds.PixelData or b"")
    if got < expected:
        raise InvalidDicomError(f"pixel data truncated: {got} bytes where {cols}x{rows}x"
                                f"{samples}x{bits} bits x {frames} frame(s) need {expected}",
                                file=file, tag="(7FE0,0010)")
    if rows * cols * samples * frames > max_pixels:  # the frame count as read above
        raise InvalidDicomError(f"the header claims {rows}x{cols} pixels x {frames} frame(s) x "
                                f"{samples} sample(s); at most {max_pixels:,} are decoded",
                                file=file, tag="(0028,0010)")
    return None


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


_IMAGE_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated")


def non_image_reason(ds: Dataset, file: str) -> str | None:
    """Why an object of a known non-image SOP class is skipped (None for an object with pixel
    data); an error for an image object (or an unknown class) without pixel data: truncated or
    corrupt."""
    if "SOPClassUID" not in ds:
        raise InvalidDicomError("no SOP Class UID in the dataset (truncated, or not a "
                                "composite object)", file=file, tag="(0008,0016)")
    if any(k in ds for k in _PIXEL_KEYWORDS):
        return None
    sop = ds.get("SOPClassUID")
    name = getattr(sop, "name", None) or str(sop or "unknown SOP class")
    if "Image Storage" in name or any(k in ds for k in _IMAGE_PIXEL_MODULE):
        raise InvalidDicomError(f"{name} object without PixelData (truncated or corrupt)",
                                file=file, tag="(7FE0,0010)")
    return f"non-image object ({name})"
