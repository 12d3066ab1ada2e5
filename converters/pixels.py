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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from converters.errors import InvalidConfigError, InvalidDicomError, UnsupportedDicomError


@dataclass(frozen=True)
class DisplayConfig:
    bits: Literal[8, 16] = 8
    equalization: Literal["global", "clahe", "none"] = "global"
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    use_voi_window: bool = False


def modality_values(ds: Dataset, file: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Decoded pixels after the Modality LUT, bone bright; returns values and transforms done."""
    if "PixelData" not in ds:
        raise InvalidDicomError("no PixelData", file=file, tag="(7FE0,0010)")
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
    arr, transforms = modality_values(ds, file)
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
            clahe = cv2.createCLAHE(clipLimit=options.clahe_clip_limit,
                                    tileGridSize=(options.clahe_tiles, options.clahe_tiles))
            img16 = clahe.apply(img16)
            transforms.append(f"clahe(clip_limit={options.clahe_clip_limit:g}, "
                              f"tiles={options.clahe_tiles})")
        img = img16 if options.bits == 16 else (img16 >> 8).astype(np.uint8)
    transforms.append(f"quantize_{options.bits}bit")
    return img, transforms
