"""DICOM pixel data to display-ready grayscale, the study's export ("histogram equalization").

Order of operations (each recorded in the provenance ``transforms`` list):

1. decode PixelData (pydicom, with pylibjpeg / gdcm plugins for compressed syntaxes);
2. Modality LUT: ``value * RescaleSlope + RescaleIntercept`` (pydicom's ``apply_modality_lut``);
3. MONOCHROME1 inverted (``max + min - value``) so that bone is bright, as in MONOCHROME2;
4. optional VOI window (``WindowCenter`` / ``WindowWidth`` or explicit values), clipping;
5. histogram equalization on the full bit-depth histogram (every distinct stored level is its
   own bin, not the 256 bins left after truncating to 8 bits), or CLAHE (OpenCV, on a 16-bit
   rescale) as an option;
6. quantization to 8 bits (0-255) or 16 bits (0-65535).

Output arrays are ``uint8`` / ``uint16``, shape (rows, columns), row 0 at the top; values are
display values where higher is brighter (bone bright).

Bounded memory: nothing is decoded before :func:`check_pixel_budget` has counted the pixels the
file claims, ``Rows x Columns x NumberOfFrames x SamplesPerPixel`` from the header and, for
encapsulated pixel data, the size each JPEG / JPEG-LS / JPEG 2000 codestream declares (the decoder
allocates what the codestream says, whatever the header says): more than ``max_pixels``
(:data:`MAX_PIXELS`, 64 megapixels, by default; the largest radiographs are about 19) is an
:class:`~converters.core.errors.InvalidDicomError` naming the file and the tags. A 2.7 kB JPEG 2000
file claiming 16000 x 16000 pixels is refused in microseconds instead of being decoded into
gigabytes. pydicom is imported only when something is decoded.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from converters.core.errors import InvalidConfigError, InvalidDicomError, UnsupportedDicomError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: pixels accepted in one object (all frames and samples), unless a stage's params say
#: otherwise (``export.max_pixels``); convert refuses larger images with the same number
MAX_PIXELS = 64_000_000
_COUNT_TAGS = {"Rows": "(0028,0010)", "Columns": "(0028,0011)",
               "NumberOfFrames": "(0028,0008)", "SamplesPerPixel": "(0028,0002)"}


@dataclass(frozen=True)
class DisplayConfig:
    bits: Literal[8, 16] = 8
    equalization: Literal["global", "clahe", "none"] = "global"
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    use_voi_window: bool = False
    max_pixels: int = MAX_PIXELS


def _header_count(ds: Dataset, keyword: str, default: int, file: str | None) -> int:
    """A non-negative integer attribute of the header (absent or empty: ``default``)."""
    try:
        value = ds.get(keyword, None)
        value = default if value is None or str(value).strip() == "" else int(value)
    except Exception:  # pydicom raises many types for a malformed element
        raise InvalidDicomError(f"{keyword} is not a number", file=file,
                                tag=_COUNT_TAGS[keyword]) from None
    if value < 0:
        raise InvalidDicomError(f"{keyword} {value} is negative", file=file,
                                tag=_COUNT_TAGS[keyword])
    return value


def check_pixel_budget(ds: Dataset, max_pixels: int = MAX_PIXELS, file: str | None = None,
                       *, setting: str | None = None) -> int:
    """The number of pixel values ``ds`` claims (module docstring), counted before anything
    is decoded; :class:`InvalidDicomError` naming ``file`` and the tags when it exceeds
    ``max_pixels`` (``setting``: the params key to name, e.g. ``export.max_pixels``)."""
    rows = _header_count(ds, "Rows", 0, file)
    cols = _header_count(ds, "Columns", 0, file)
    frames = max(_header_count(ds, "NumberOfFrames", 1, file), 1)
    samples = max(_header_count(ds, "SamplesPerPixel", 1, file), 1)
    total = rows * cols * frames * samples
    limit = f"at most {max_pixels:,} are decoded" + (f" ({setting})" if setting else "")
    if total > max_pixels:
        raise InvalidDicomError(
            f"the header claims {rows}x{cols} pixels x {frames} frame(s) x {samples} "
            f"sample(s) = {total:,} values; {limit}; Rows (0028,0010), Columns (0028,0011), "
            "NumberOfFrames (0028,0008), SamplesPerPixel (0028,0002)", file=file)
    coded = _largest_codestream(ds)
    if coded is not None and coded[0] * coded[1] * coded[2] > max_pixels:
        height, width, comps = coded
        raise InvalidDicomError(
            f"a compressed frame claims {width}x{height} pixels x {comps} component(s) in its "
            f"codestream header (the header: Rows {rows}, Columns {cols}); {limit}",
            file=file, tag="(7FE0,0010)")
    return total


def _largest_codestream(ds: Dataset) -> tuple[int, int, int] | None:
    """(height, width, components) of the largest JPEG / JPEG-LS / JPEG 2000 codestream
    header among the fragments of encapsulated pixel data; None when there is none."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_encapsulated", False) or "PixelData" not in ds:
        return None
    from io import BytesIO

    from pydicom.encaps import generate_fragments, parse_basic_offsets

    best = None
    try:
        buffer = BytesIO(ds.PixelData)
        parse_basic_offsets(buffer)
        for fragment in generate_fragments(buffer):
            size = _j2k_size(fragment) or _jpeg_size(fragment)
            if size and (best is None or size[0] * size[1] * size[2] > best[0] * best[1] * best[2]):
                best = size
    except (ValueError, struct.error, TypeError):
        return best  # malformed encapsulation: the decoder reports it
    return best


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG 2000 SIZ segment (ISO 15444-1 A.5.1), in a
    bare codestream or a JP2 file's ``jp2c`` box."""
    offset = 0
    if data.startswith(b"\x00\x00\x00\x0cjP  "):
        offset = data.find(b"jp2c") + 4
        if offset < 4:
            return None
    if data[offset:offset + 4] != b"\xff\x4f\xff\x51" or len(data) < offset + 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[offset + 8:offset + 24])
    (csiz,) = struct.unpack(">H", data[offset + 40:offset + 42])
    return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), csiz


def _jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from the SOF segment of a JPEG / JPEG-LS codestream."""
    if not data.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        sof = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xF7
        if sof and offset + 10 <= len(data):
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return height, width, data[offset + 9]
        offset += 2 + length
    return None


def modality_values(ds: Dataset, file: str | None = None,
                    max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Decoded pixels after the Modality LUT, bone bright; returns values and transforms done.
    The pixel count is checked first (:func:`check_pixel_budget`)."""
    if "PixelData" not in ds:
        raise InvalidDicomError("no PixelData", file=file, tag="(7FE0,0010)")
    check_pixel_budget(ds, max_pixels, file)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedDicomError(
            f"{ds.get('PhotometricInterpretation', '?')} colour image; "
            "only grayscale radiographs are exported", file=file)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedDicomError(f"PhotometricInterpretation {photometric or 'missing'}",
                                    file=file, tag="(0028,0004)")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing decoders / truncation
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise UnsupportedDicomError(f"cannot decode pixel data ({name}): {exc}".splitlines()[0],
                                    file=file) from None
    if arr.ndim != 2:
        raise UnsupportedDicomError(f"{arr.ndim}-dimensional pixel data (multi-frame?)", file=file)
    transforms = ["decode"]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0 or "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        arr = apply_modality_lut(arr, ds)
        transforms.append(f"modality_lut(slope={slope:g}, intercept={intercept:g})")
    if photometric == "MONOCHROME1":
        lo, hi = arr.min(), arr.max()
        arr = (hi + lo) - arr
        transforms.append("invert_monochrome1")
    return arr, transforms


def _window(ds: Dataset, arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is None or ww is None:
        return arr, None
    wc = float(wc[0] if hasattr(wc, "__len__") and not isinstance(wc, str) else wc)
    ww = float(ww[0] if hasattr(ww, "__len__") and not isinstance(ww, str) else ww)
    lo, hi = wc - ww / 2, wc + ww / 2
    return np.clip(arr, lo, hi), f"voi_window(center={wc:g}, width={ww:g})"


def equalize_full_depth(values: np.ndarray, out_max: int) -> np.ndarray:
    """Histogram-equalize on every distinct level of ``values``; map to 0..``out_max``.

    Integer inputs use one ``bincount`` bin per level (a 12-bit image has 4096 bins); other
    inputs are ranked through ``np.unique``. The lowest level maps to 0, the highest to
    ``out_max`` (the classic ``(cdf - cdf_min) / (N - cdf_min)`` formula).
    """
    if np.issubdtype(values.dtype, np.integer):
        lo = int(values.min())
        idx = (values - lo).astype(np.intp, copy=False) if lo else values.astype(np.intp, copy=False)
        hist = np.bincount(idx.ravel())
        cdf = np.cumsum(hist)
        inverse = idx
    else:
        uniq, inverse, hist = np.unique(values.ravel(), return_inverse=True, return_counts=True)
        cdf = np.cumsum(hist)
        inverse = inverse.reshape(values.shape)
    cdf_min = cdf[np.flatnonzero(hist)[0]]
    denom = max(int(cdf[-1] - cdf_min), 1)
    dtype = np.uint8 if out_max <= 255 else np.uint16
    lut = np.clip(np.rint((cdf - cdf_min) * (out_max / denom)), 0, out_max).astype(dtype)
    return lut[inverse]


def check_display(options: DisplayConfig) -> None:
    """:class:`InvalidConfigError` for settings OpenCV cannot take (it dies of SIGFPE on zero
    CLAHE tiles): refused here too, for library callers, not only in params.yaml."""
    if options.clahe_tiles < 1 or options.clahe_clip_limit < 0:
        raise InvalidConfigError(f"clahe_tiles must be >= 1 and clahe_clip_limit >= 0, got "
                                 f"{options.clahe_tiles} and {options.clahe_clip_limit}")


def to_display(ds: Dataset, options: DisplayConfig = DisplayConfig(),
               file: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The whole export pixel pipeline; returns the image and the list of transforms applied."""
    check_display(options)
    arr, transforms = modality_values(ds, file, options.max_pixels)
    if options.use_voi_window:
        arr, done = _window(ds, arr)
        if done:
            transforms.append(done)
    out_max = 255 if options.bits == 8 else 65535
    if options.equalization == "global":
        img = equalize_full_depth(arr, out_max)
        transforms.append(f"histogram_equalization(full_depth, levels={int(np.ptp(arr)) + 1})"
                          if np.issubdtype(arr.dtype, np.integer)
                          else "histogram_equalization(full_depth)")
    else:
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr.astype(np.float32) - lo) * (65535.0 / max(hi - lo, 1e-9))
        img16 = np.rint(scaled).astype(np.uint16)
        transforms.append("rescale_to_16bit")
        if options.equalization == "clahe":
            import cv2  # here: anonymize reads this module and needs no OpenCV

            clahe = cv2.createCLAHE(clipLimit=options.clahe_clip_limit,
                                    tileGridSize=(options.clahe_tiles, options.clahe_tiles))
            img16 = clahe.apply(img16)
            transforms.append(f"clahe(clip_limit={options.clahe_clip_limit:g}, "
                              f"tiles={options.clahe_tiles})")
        img = img16 if options.bits == 16 else (img16 >> 8).astype(np.uint8)
    transforms.append(f"quantize_{options.bits}bit")
    return img, transforms
