"""The phantom's image physics: solids projected into line integrals, then an exposure.

Projection. Every structure is a :class:`Solid`: its midsagittal section (a polygon in image
pixels, COCO convention: x right, y down, pixel centres at +0.5) and its extent across the beam
(the lateral projection's rays run left-right through the patient). A solid with an ``axis`` is
elliptical in cross-section along it (a vertebral body's axial section, a screw's shaft): the
path a ray takes through it falls to zero at its edges. A ``cortex`` makes it a shell: the rays
that graze the cortex (walls, endplates) cross more of it (up to ``cortex_path_mm``: the shell is
curved), so edges come out bright, as on a radiograph. Attenuations are per mm in excess of soft tissue; the line integral (dimensionless,
sum of mu x path) of overlapping solids adds.

Exposure (:func:`expose`): Beer-Lambert (``exp(-L)``) of the line integral, the heel effect
(the tube's output falls towards the anode, the image's top), scatter (a low-pass share of the
primary, the scatter-to-primary ratio behind the grid), collimation (outside the field
only a little scatter, masked black by the modality), quantum noise (Poisson counts at the chosen dose), detector blur (the
scintillator's MTF, a Gaussian applied after the quanta are counted, so the noise is
correlated as a real detector's is), then the modality's log-exposure mapping to 12 bits
(0-:data:`MAX_VALUE`, bone bright: MONOCHROME2 sense) scaled to the field's histogram, as CR and
DX auto-ranging does.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from converters.phantom.plan import Exposure

MAX_VALUE = 4095  # 12 bits stored


@dataclass
class Solid:
    """A structure in the beam (see the module docstring)."""

    outline: np.ndarray           # (k, 2) float image pixels: the midsagittal section
    half_width_mm: float          # half its extent across the beam, at its widest
    mu: float                     # excess attenuation of its interior, per mm
    axis: np.ndarray | None = None  # the section's direction along which the width is elliptical
    cortex_px: float = 0.0        # shell thickness (0: homogeneous)
    mu_cortex: float = 0.0
    cortex_path_mm: float = 12.0  # the most cortex one ray crosses (a curved shell, grazed)
    texture: float = 0.0          # trabecular texture (relative amplitude)


def _window(pts: np.ndarray, h: int, w: int, pad: int):
    x0 = max(int(np.floor(pts[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + pad + 1, w)
    y1 = min(int(np.ceil(pts[:, 1].max())) + pad + 1, h)
    return x0, y0, x1, y1


def project(solids: list[Solid], shape: tuple[int, int], spacing_mm: float,
            rng: np.random.Generator) -> np.ndarray:
    """The line integrals (float32, ``shape``) of ``solids``, each added in its bounding box."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for s in solids:
        x0, y0, x1, y1 = _window(s.outline, h, w, 2)
        if x1 <= x0 or y1 <= y0:
            continue
        # OpenCV has pixel centres at integers, COCO at +0.5: shift by half a pixel
        local = np.round((s.outline - 0.5 - (x0, y0)) * 16).astype(np.int32)
        m8 = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(m8, [local], 255, lineType=cv2.LINE_AA, shift=4)
        cover = m8.astype(np.float32) * (1 / 255)
        chord_out = np.full(cover.shape, 2 * s.half_width_mm, np.float32)
        if s.axis is not None:
            gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
            u = gx * float(s.axis[0]) + gy * float(s.axis[1])
            span = s.outline @ s.axis
            mid, half = (span.max() + span.min()) / 2, max((span.max() - span.min()) / 2, 1e-3)
            chord_out *= np.sqrt(np.clip(1 - ((u - mid) / half) ** 2, 0, 1))
        path = chord_out * s.mu
        if s.cortex_px > 0:
            dist = cv2.distanceTransform((m8 > 127).astype(np.uint8), cv2.DIST_L2, 3)
            inner = np.clip(dist - s.cortex_px, 0, 1)
            c_mm = s.cortex_px * spacing_mm
            chord_in = np.full(cover.shape, 2 * max(s.half_width_mm - c_mm, 0), np.float32)
            if s.axis is not None:
                half_in = max(half - s.cortex_px, 1e-3)
                chord_in *= np.sqrt(np.clip(1 - ((u - mid) / half_in) ** 2, 0, 1))
            chord_in *= inner
            path = chord_in * s.mu + np.minimum(chord_out - chord_in, s.cortex_path_mm) * s.mu_cortex
        if s.texture:
            grain = rng.standard_normal(cover.shape, dtype=np.float32)
            grain = cv2.GaussianBlur(grain, (0, 0), sigmaX=0.7, sigmaY=1.6)
            coarse = cv2.GaussianBlur(rng.standard_normal(cover.shape, dtype=np.float32),
                                      (0, 0), sigmaX=4.0)
            path = path * (1 + s.texture * (2.5 * grain + 6 * coarse))
        out[y0:y1, x0:x1] += cover * path
    return out


def doubled(line: np.ndarray, shift_px: float) -> np.ndarray:
    """The two sides of the body projected apart: half the line integral magnified a little
    more than the other half (a divergent beam and a slightly rotated patient), so the
    posterior walls and endplates show double contours away from the central ray."""
    if shift_px < 0.05:
        return line
    h, w = line.shape
    out = np.zeros_like(line)
    for sign in (-0.5, 0.5):
        m = 1 + sign * 2 * shift_px / max(h, w)
        dx = sign * shift_px
        mat = np.float32([[m, 0, (1 - m) * w / 2 + dx], [0, m, (1 - m) * h / 2 + 0.3 * dx]])
        out += 0.5 * cv2.warpAffine(line, mat, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
    return out


def expose(line: np.ndarray, ex: Exposure, rng: np.random.Generator) -> np.ndarray:
    """12-bit pixel values (uint16, bone bright) of an exposure through ``line`` (see the
    module docstring). Outside the collimated field the detector saw only a little scatter;
    the modality masks it black (an electronic shutter), as processed CR and DX images do."""
    h, w = line.shape
    field = np.zeros((h, w), bool)
    left, top, right, bottom = ex.collimation
    field[int(top * h):h - int(bottom * h), int(left * w):w - int(right * w)] = True
    ref = float(np.median(line[field]))  # the exposure is set for the spine (the AEC's chamber)
    heel = (1 - ex.heel * (1 - np.arange(h, dtype=np.float32) / h))[:, None]
    primary = np.where(field, ex.counts * heel * np.exp(-(line - ref)), 0).astype(np.float32)
    # scatter comes from the irradiated patient: a low-pass of the primary, its burnt-out
    # parts (air, thin tissue) capped, scaled to the scatter-to-primary ratio at the spine
    source = np.minimum(primary, ex.counts)
    small = cv2.resize(source, (max(w // 8, 1), max(h // 8, 1)), interpolation=cv2.INTER_AREA)
    scatter = cv2.resize(cv2.GaussianBlur(small, (0, 0), 0.06 * max(small.shape)), (w, h),
                         interpolation=cv2.INTER_LINEAR)
    expected = primary + ex.scatter * scatter
    counts = rng.poisson(expected).astype(np.float32)
    counts = cv2.GaussianBlur(counts, (0, 0), sigmaX=ex.blur_px)
    log_e = np.log(np.maximum(counts, 0.5))
    lo, hi = np.percentile(log_e[field], [0.5, 99.8])
    t = np.clip((hi - log_e) / max(hi - lo, 1e-6), 0, 1) ** ex.contrast
    out = np.clip(np.rint(120 + 3850 * t), 0, MAX_VALUE).astype(np.uint16)
    out[~field] = 0
    return out
