"""Endplates found where they are on the full-resolution radiograph, not where a coarse outline
says: each endplate of :func:`converters.spine.endplates.find_vertebrae` (a model's mask traced
at its own resolution, or a reader's polygon) is a *prior*; :func:`refine_spine` searches a band
around it on the image for the edge of the bone and fits the endplate's line to that edge.

Image: the exported PNG (or any 2-D array) in the export's sense, bone bright (MONOCHROME1 is
inverted at export, :mod:`converters.dicom.pixels`), any bit depth; coordinates are those of the
outlines (COCO: x right, y down, pixels, origin at the top-left corner of the top-left pixel, so
the centre of pixel (i, j) is at (j + 0.5, i + 0.5)).

Method, per endplate (prior: posterior corner P, anterior corner A, length L; inward normal n,
into the body: caudal for a superior endplate, cranial for an inferior one, in the spine's frame):

1. profiles: at ``t`` from 15 % to 85 % of the way from P to A (the corners are left out:
   they round off), every pixel but at most 64 (and at least 8) of them, the image is sampled
   (bilinear, after a Gaussian of :attr:`MeasuresConfig.sigma_px`) along ``s`` in
   [-band, +band] across the prior (the band at most the prior's length), every 0.25 px;
2. edge candidates: on each profile the three strongest rises of brightness going into the
   body (local maxima of the derivative along ``n``: the disc, dark, meets the cortical rim,
   bright; the neighbour's endplate across the disc falls the other way), located to sub-pixel
   precision by a parabola through the maximum and its neighbours, kept when they stand above
   the band's noise (``min_snr`` x the robust spread of the derivative, at least 0.2 % of the
   image's range and of 1);
3. line: RANSAC over pairs of candidates on different profiles (tilt within ``max_tilt_deg``
   of the prior): the line that most profiles support (a candidate within ``inlier_px``) wins,
   ties to the stronger edges, refitted by least squares on each supporting profile's strongest
   candidate near it; the refined corners are P and A moved onto that line along ``n``. Where
   rises do not reach ``min_confidence``, falls are tried (metal on the endplate, a cage
   brighter than bone: the endplate is where the metal ends), but only on the body's side of
   the prior (from ``inlier_px`` outside it: the neighbour's endplate across the disc falls
   too), and the better-supported line is kept (``rising`` says which). Where a cage overlaps
   the body in projection, the edge where its metal ends can lie inside the body: such fits
   say ``rising`` false;
4. a second pass from the first pass's line, so that a prior tilted out of the band at its
   ends sees the whole edge.

Corners: the refined line's, where the prior's corners project onto it (where along the
endplate they lie comes from the outline). On the demo, corners where the refined walls meet
the refined endplates, corners where the edge along the refined line fades, and the chord of a
parabola through a concave endplate's edge were tried: disc heights no better, or worse.

Confidence: the share of the profiles whose edge point lies on the fitted line (an endplate seen
along its length: near 1; an edge found on a third of it: 0.33). Below ``min_confidence`` the
endplate is withheld with its reason, and its level with it (never a guess: the measures that
use the level stay empty, :mod:`converters.spine.measures`). Also withheld: no image, a prior
shorter than ``min_length_px``, or a band that leaves the image. (Withholding the endplate alone,
the level's other endplate still measured, was tried on the demo: 1-8 points more of each
measure made, but the segmental angles' error up to twice as large: an endplate not seen on the
image marks a mask wrong as a whole.)

S1: the sacrum's superior endplate is refined the same way, so a sacrum mask that fills the
wedge of the L5/S1 disc (its prior tilted towards L5's endplate) is moved onto the sacrum's own
upper edge; the edge rises into the sacrum (caudally), so L5's inferior endplate, which rises
cranially, is not taken for it. (A band reaching twice as deep into the sacrum was tried on the
demo: it found the sacrum's inner structures as often as its endplate, and measured worse.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from converters.spine.endplates import Endplate, Spine, unit_vector

SIDES = ("superior", "inferior")


@dataclass(frozen=True)
class MeasuresConfig:
    """params.yaml section ``measures``: the clinical measures and their endplate refinement."""

    refine: bool = False               # readers' polygons (convert): refine on the image too
    refine_predictions: bool = True    # models' outlines (evaluate, propose): refine
    band_mm: float = field(default=6.0, metadata={"min": 0.1})   # search +/- this across the prior
    band_px: float = field(default=9.0, metadata={"min": 1.0})   # ... when the spacing is unknown
    sigma_px: float = field(default=1.0, metadata={"min": 0.0})  # Gaussian before the profiles
    min_snr: float = field(default=2.5, metadata={"min": 0.0})   # an edge point's height
    inlier_px: float = field(default=1.0, metadata={"min": 0.1})  # on the fitted line
    max_tilt_deg: float = field(default=25.0, metadata={"min": 0.0, "max": 60.0})
    min_confidence: float = field(default=0.4, metadata={"min": 0.0, "max": 1.0})
    min_length_px: float = field(default=6.0, metadata={"min": 2.0})
    # plausibility (converters/spine/plausible.py), of every outline set measured, refined or not
    max_segment_deg: float = field(default=45.0, metadata={"min": 1.0, "max": 180.0})
    min_disc_ratio: float = field(default=0.06, metadata={"min": 0.0, "max": 0.5})
    # semantic models' components (evaluate, propose): a lumbar blob over 1.6 bodies tall is
    # cut into its bodies before the levels are assigned (converters/spine/fused.py)
    split_fused: bool = True


@dataclass(frozen=True)
class Fit:
    """One endplate's refinement: the prior, the refined endplate (None: withheld, ``reason``
    says why), the confidence (module docstring), the refined line's shift at the prior's
    middle (px, + into the body) and tilt against the prior (degrees), the inliers' RMS
    residual (px)."""

    prior: Endplate
    refined: Endplate | None
    confidence: float
    shift_px: float = 0.0
    tilt_deg: float = 0.0
    residual_px: float = 0.0
    reason: str = ""
    rising: bool = True      # the edge rises into the body (False: metal on the endplate)


def usable_spacing(spacing_mm: tuple[float, float] | None) -> tuple[float, float] | None:
    """The pixel spacing where both values are finite and positive, else None (unknown)."""
    if spacing_mm and all(math.isfinite(v) and v > 0 for v in spacing_mm):
        return spacing_mm
    return None


def search_band(cfg: MeasuresConfig, spacing_mm: tuple[float, float] | None) -> float:
    """The band in pixels: ``band_mm`` at the pixel spacing, ``band_px`` without a usable
    one (each endplate's band is at most its length, :func:`refine_endplate`)."""
    spacing_mm = usable_spacing(spacing_mm)
    return cfg.band_mm / float(min(spacing_mm)) if spacing_mm else cfg.band_px


def gray_image(image: np.ndarray) -> np.ndarray:
    """A 2-D image of numbers: colour (BGR or BGRA, as OpenCV reads it) to grey, booleans to
    0 / 1."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image[..., :3].astype(np.float32), cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"an image of shape {image.shape} is not a radiograph")
    return image


def noise_floor(image: np.ndarray) -> float:
    """0.2 % of the image's range (robust: 0.5th to 99.5th percentile of a strided sample),
    and of 1 (so a flat image's rounding errors are never an edge)."""
    sample = image[::7, ::7]
    lo, hi = np.percentile(sample, (0.5, 99.5)) if sample.size else (0.0, 1.0)
    return 0.002 * max(float(hi - lo), 1.0)


def refine_endplate(image: np.ndarray, prior: Endplate, inward: np.ndarray,
                    cfg: MeasuresConfig, band: float, floor: float | None = None) -> Fit:
    """Refine one endplate (module docstring) on a 2-D ``image``; ``inward`` points into the
    body (only its side of the prior's line counts), ``band`` in pixels. A second pass starts
    from the first's line, so a prior tilted out of the band at its ends sees the whole edge
    (each pass searches ``band`` and ``max_tilt_deg`` around its start: the result lies
    within twice that of the prior; on the demo, limiting it to once measured worse)."""
    floor = noise_floor(image) if floor is None else floor
    fit = _refine_once(image, prior, inward, cfg, band, floor)
    reach = abs(fit.shift_px) + abs(math.tan(math.radians(fit.tilt_deg))) * _length(prior) / 2
    if fit.refined is not None and (reach >= band / 2 or fit.confidence < 0.9):
        second = _refine_once(image, fit.refined, inward, cfg, band, floor)
        if second.refined is not None and second.confidence >= fit.confidence:
            shift, tilt = against(prior, second.refined, inward)
            fit = replace(second, prior=prior, shift_px=shift, tilt_deg=tilt)
    return fit


def against(prior: Endplate, line: Endplate, inward: np.ndarray) -> tuple[float, float]:
    """A line against the prior: its shift at the prior's middle along the prior's inward
    normal (px, + into the body) and its tilt (degrees, + where its anterior end lies deeper
    into the body than its posterior end, relative to the prior)."""
    d = prior.vector / _length(prior)
    n = _inward_normal(prior, inward)
    v = line.vector
    tilt = math.degrees(math.atan2(float(v @ n), float(v @ d)))
    P, Q = np.asarray(line.posterior), np.asarray(line.anterior)

    def offset(point) -> float:      # the line's offset along n at the prior's point
        w = Q - P
        den = float(w @ d)
        if abs(den) < 1e-12:
            return math.inf
        u = float((np.asarray(point) - P) @ d) / den
        return float((P + u * w - np.asarray(point)) @ n)

    return offset(prior.midpoint), tilt


def _length(plate: Endplate) -> float:
    return float(np.linalg.norm(plate.vector))


def _inward_normal(plate: Endplate, inward: np.ndarray) -> np.ndarray:
    d = plate.vector / _length(plate)
    n = np.array([-d[1], d[0]])
    return n if n @ inward > 0 else -n


def _refine_once(image: np.ndarray, prior: Endplate, inward: np.ndarray,
                 cfg: MeasuresConfig, band: float, floor: float) -> Fit:
    """One pass of :func:`refine_endplate`."""
    P = np.asarray(prior.posterior, dtype=np.float64)
    A = np.asarray(prior.anterior, dtype=np.float64)
    length = float(np.linalg.norm(A - P))
    if not np.isfinite(length) or length < cfg.min_length_px:
        return Fit(prior, None, 0.0, reason=f"endplate prior {length:.1f} px long, shorter "
                                            f"than {cfg.min_length_px:g} px")
    d = (A - P) / length
    n = np.array([-d[1], d[0]])
    if n @ inward < 0:
        n = -n
    step = 0.25
    t = np.linspace(0.15 * length, 0.85 * length, int(np.clip(round(0.7 * length), 8, 64)))
    band = min(band, length)         # (a band wider than the endplate means nothing)
    s = np.arange(-band, band + step / 2, step)
    grad = _derivative(image, P, d, n, t, s, cfg.sigma_px)
    if grad is None:
        return Fit(prior, None, 0.0, reason="the search band leaves the image")
    sample = grad[::2, ::3]
    spread = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    noise = max(spread, floor)
    line = None
    for sign in (1.0, -1.0):        # rising into the body; else falling (metal on the endplate)
        cand_s, cand_g = _candidates(sign * grad, s, step, cfg.min_snr * noise)
        if sign < 0:      # metal's edge: not outside the outline (module docstring)
            outside = ~(cand_s >= -cfg.inlier_px)
            cand_s, cand_g = np.where(outside, np.nan, cand_s), np.where(outside, 0.0, cand_g)
        found = _ransac(t, cand_s, cand_g, cfg.inlier_px,
                        math.tan(math.radians(cfg.max_tilt_deg)))
        if found is not None and (line is None or len(found[2]) > len(line[2])):
            line, rising = found, sign > 0
        if line is not None and len(line[2]) >= cfg.min_confidence * len(t):
            break
    if line is None:
        return Fit(prior, None, 0.0, reason=f"no edge within {band:.1f} px of the prior")
    a, b, tt, ss = line
    conf = len(tt) / len(t)
    resid = float(np.sqrt(np.mean((ss - (a + b * tt)) ** 2)))
    # tilt: + where the anterior end (t = length) lies deeper into the body (s larger)
    shift, tilt = a + b * length / 2, math.degrees(math.atan(b))
    if conf < cfg.min_confidence:
        return Fit(prior, None, conf, shift, tilt, resid,
                   reason=f"edge seen along {100 * conf:.0f} % of the endplate (confidence "
                          f"{conf:.2f} < {cfg.min_confidence:g})", rising=rising)
    p_new = P + a * n
    a_new = P + length * d + (a + b * length) * n
    return Fit(prior, Endplate((float(p_new[0]), float(p_new[1])),
                               (float(a_new[0]), float(a_new[1]))), conf, shift, tilt, resid,
               rising=rising)


def _derivative(image: np.ndarray, P: np.ndarray, d: np.ndarray, n: np.ndarray, t: np.ndarray,
                s: np.ndarray, sigma: float) -> np.ndarray | None:
    """The image's derivative along ``n`` at ``P + t d + s n`` (profiles: rows, one per
    ``t``), after a Gaussian of ``sigma``; + : brighter going along ``n``. None when a sample
    lies outside the image."""
    h, w = image.shape[:2]
    pts = P + t[:, None, None] * d + s[None, :, None] * n          # (nt, ns, 2) x, y
    # pixel-centre convention: the value of pixel (i, j) sits at (j + 0.5, i + 0.5)
    xy = pts - 0.5
    margin = 3 * sigma + 2
    # the samples lie on a parallelogram (P + t d + s n is affine in t and s): its four
    # corners bound them all, and lie inside the image exactly when every sample does
    corners = xy[[0, 0, -1, -1], [0, -1, 0, -1]]
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    x0, y0 = np.floor(lo - margin).astype(int)
    x1, y1 = np.ceil(hi + margin).astype(int) + 1
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        # the samples themselves inside: a band touching the border is still refined
        if lo.min() < 0 or hi[0] > w - 1 or hi[1] > h - 1:
            return None
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    crop = image[y0:y1, x0:x1].astype(np.float32)
    if sigma > 0:
        k = 2 * math.ceil(2 * sigma) + 1         # +-2 sigma: the kernel's 95 %
        crop = cv2.GaussianBlur(crop, (k, k), sigma, borderType=cv2.BORDER_REFLECT)
    mx = (xy[..., 0] - x0).astype(np.float32)
    my = (xy[..., 1] - y0).astype(np.float32)
    prof = cv2.remap(crop, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.gradient(prof, s[1] - s[0], axis=1)


def _candidates(grad: np.ndarray, s: np.ndarray, step: float, threshold: float,
                per_profile: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Edge candidates: on each profile (row of ``grad``) the local maxima of the derivative
    at or above ``threshold``, the ``per_profile`` strongest, at sub-pixel ``s`` (a parabola
    through the maximum and its neighbours). Two (profiles x per_profile) arrays: positions
    (NaN: none) and strengths (0: none)."""
    g0, g1, g2 = grad[:, :-2], grad[:, 1:-1], grad[:, 2:]
    ranked = np.where((g1 > g0) & (g1 >= g2) & (g1 >= threshold), g1, -np.inf)
    cols = np.argsort(-ranked, axis=1)[:, :per_profile]
    a, b, c = (np.take_along_axis(g, cols, axis=1) for g in (g0, g1, g2))
    found = np.isfinite(np.take_along_axis(ranked, cols, axis=1))
    denom = a - 2 * b + c
    delta = np.where(denom < 0, 0.5 * (a - c) / np.where(denom < 0, denom, -1.0), 0.0)
    pos = s[cols + 1] + np.clip(delta, -0.5, 0.5) * step
    return np.where(found, pos, np.nan), np.where(found, b, 0.0)


def _ransac(t: np.ndarray, cand_s: np.ndarray, cand_g: np.ndarray, tol: float,
            max_slope: float, max_pairs: int = 200
            ) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """The line s = a + b t (|b| <= max_slope) that the most profiles support (a candidate
    within ``tol``), from pairs of candidates on different profiles (every pair, or a fixed
    sample of ``max_pairs``); ties: the stronger edges. Refitted by least squares on each
    supporting profile's strongest candidate near it, twice. Returns (a, b, t, s of those
    candidates); None without two profiles with a candidate."""
    rows, cols = np.nonzero(~np.isnan(cand_s))
    if len(np.unique(rows)) < 2:
        return None
    n = len(rows)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(0)
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    i, j = i[rows[i] != rows[j]], j[rows[i] != rows[j]]
    ti, tj = t[rows[i]], t[rows[j]]
    si, sj = cand_s[rows[i], cols[i]], cand_s[rows[j], cols[j]]
    b = (sj - si) / (tj - ti)
    keep = np.abs(b) <= max_slope
    if not keep.any():
        return None
    b = b[keep]
    a = si[keep] - b * ti[keep]
    with np.errstate(invalid="ignore"):
        res = np.abs(cand_s[None] - (a[:, None, None] + b[:, None, None] * t[None, :, None]))
        inl = res <= tol
    count = inl.any(axis=2).sum(axis=1)
    top = np.flatnonzero(count == count.max())        # ties: the stronger edges
    weight = np.where(inl[top], cand_g[None], 0.0).max(axis=2).sum(axis=1)
    best = top[np.argmax(weight)]
    aa, bb = float(a[best]), float(b[best])
    for last in (False, False, True):
        with np.errstate(invalid="ignore"):
            near = np.abs(cand_s - (aa + bb * t[:, None])) <= tol
        pick = np.argmax(np.where(near, cand_g, -1.0), axis=1)
        on = near[np.arange(len(t)), pick]
        tt, ss = t[on], cand_s[np.arange(len(t)), pick][on]
        if last or len(tt) < 2:
            return aa, bb, tt, ss
        nb, na = np.polyfit(tt, ss, 1)
        if abs(nb) > max_slope:
            return aa, bb, tt, ss
        aa, bb = float(na), float(nb)
    return None  # unreachable: the loop returns


def refine_spine(spine: Spine, image: np.ndarray | None, cfg: MeasuresConfig,
                 spacing_mm: tuple[float, float] | None = None, *,
                 image_name: str = "the image") -> Spine:
    """The spine with every endplate refined on ``image`` (module docstring), its ``fits``
    (level -> side -> :class:`Fit`) filled. A level with an endplate withheld becomes unusable
    with the reason; with no image, every level is."""
    fits: dict[str, dict[str, Fit]] = {}
    out = Spine(anterior=spine.anterior, up=spine.up, unusable=dict(spine.unusable), fits=fits)
    if spine.up is None or not spine.vertebrae:
        return out
    if image is None:
        for lv in spine.vertebrae:
            out.unusable[lv] = f"{image_name} not found or unreadable: endplates not refined"
        return out
    image = gray_image(image)
    band = search_band(cfg, spacing_mm)
    floor = noise_floor(image)
    for lv, vt in spine.vertebrae.items():
        fits[lv] = {}
        plates = {}
        for side in SIDES:
            prior = getattr(vt, side)
            if prior is None:
                continue
            inward = -spine.up if side == "superior" else spine.up
            fit = refine_endplate(image, prior, unit_vector(np.asarray(inward, float)), cfg,
                                  band, floor)
            fits[lv][side] = fit
            plates[side] = fit.refined
        withheld = [f"{side} endplate: {fits[lv][side].reason}" for side in SIDES
                    if side in fits[lv] and fits[lv][side].refined is None]
        if withheld:
            out.unusable[lv] = "; ".join(withheld)
            continue
        out.vertebrae[lv] = replace(vt, superior=plates["superior"],
                                    inferior=plates.get("inferior"))
    return out


def confidence(spine: Spine) -> float | None:
    """The image's confidence: the lowest of the refined endplates of its usable levels (those
    withheld say why in ``not_measurable``; None: nothing refined)."""
    values = [f.confidence for lv, sides in spine.fits.items() for f in sides.values()
              if f.refined is not None and lv in spine.vertebrae]
    return min(values) if values else None


__all__ = ["MeasuresConfig", "Fit", "refine_endplate", "refine_spine", "confidence", "search_band",
           "gray_image", "noise_floor", "against", "usable_spacing"]
