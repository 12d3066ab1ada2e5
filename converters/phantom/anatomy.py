"""The phantom's anatomy: a case (:class:`converters.phantom.plan.Case`) made into the solids a
lateral lumbar radiograph projects, and the regions its annotator draws.

The spine is a chain of vertebral bodies (T12, sometimes T11, L1-L5 or L1-L6) on a lordotic curve
above the sacrum. Each body is a shell (cortex about 1 mm over trabecular bone, elliptical in its
axial section) with concave endplates, rounded corners and a waisted anterior wall; pedicles,
facets and spinous processes behind it; the sacrum and the iliac wings as shells; ribs above;
the psoas and bowel gas over the spine in a soft-tissue trunk; degenerated discs (bodies that
overlap in projection, vacuum gas), slips, osteophytes, wedge fractures with cement, a
lumbosacral transitional vertebra, and implants of metal (screws, rods, cages). Attenuations are
per mm in excess of soft tissue (:mod:`converters.phantom.physics`).

The annotator draws what is visible: each body's polygon (6-15 points) lies on the rounded
outline of the projected solid, its endplate corners clicked where the rounded corners are; the
truth's endplates are those very vertices. Osteophytes are bone but not body: they are left out
of the polygon, as annotators do. Implants are drawn as the polygons they were made from.

Coordinates: COCO convention (x right, y down, pixel centres at +0.5); polygons the VIA file
stores are integers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from converters.phantom.physics import MAX_VALUE, Solid, doubled, expose, project
from converters.phantom.plan import SACRALIZED_L5, Case
from converters.phantom.shapes import (Region, axis, body_corners, rect, rot, sacrum_outline,
                                       smooth_outline, snap, vertebral_body)

__all__ = ["MAX_VALUE", "Region", "render"]

# attenuation in excess of soft tissue, per mm (about 60 keV)
MU_TRABECULAR = 0.009
MU_CORTEX = 0.06
MU_SOFT = 0.02        # soft tissue itself
MU_METAL = 0.3        # titanium / cobalt-chrome screws and rods
MU_CAGE = 0.045       # a porous titanium cage (about a third of solid titanium)
MU_CEMENT = 0.05      # barium-loaded PMMA


@dataclass
class Chain:
    """The spine in local units (body height = 1): per body (0 = T12) its centre and axis
    angle (anterior tilt, radians); the sacrum's superior endplate centre and angle."""

    centers: list[np.ndarray]
    phis: list[float]
    heights: list[float]
    a: float            # half the body depth
    s_top: np.ndarray
    phi_s: float
    s_a: float          # half the S1 endplate's depth


def _chain(case: Case, rng: np.random.Generator) -> Chain:
    n_l = case.n_lumbar
    n_b = n_l + 1
    lordosis = math.radians(case.lordosis_deg + rng.normal(0, 2))
    sacral_extra = math.radians(case.sacral_extra_deg + rng.normal(0, 2))
    h, gaps = list(case.heights), list(case.gaps)
    # L1 leans anteriorly-down, the lowest lumbar body posteriorly-down; the sacrum follows
    phis = [lordosis * (0.6 - 1.6 * (i - 1) / (n_l - 1)) + rng.normal(0, math.radians(2.0))
            for i in range(n_b)]
    phis[0] = lordosis * 0.9
    centers = [np.zeros(2)]
    for i in range(1, n_b):
        step = h[i - 1] / 2 + gaps[i - 1] + h[i] / 2
        centers.append(centers[-1] + step * axis((phis[i - 1] + phis[i]) / 2))
    phi_s = phis[-1] - sacral_extra
    s_top = centers[-1] + (h[n_l] / 2 + gaps[n_l]) * axis((phis[-1] + phi_s) / 2)
    a = case.depth / 2
    s_a = a * rng.uniform(1.0, 1.12)
    # S1's posterior-superior corner under the last body's posterior-inferior one
    u_s = np.array([math.cos(phi_s), -math.sin(phi_s)])
    corner = centers[-1] - a * np.array([math.cos(phis[-1]), -math.sin(phis[-1])]) \
        + h[n_l] / 2 * 0.91 * axis(phis[-1])
    s_top = s_top + float((corner - (s_top - s_a * u_s)) @ u_s) * u_s
    if case.slip is not None:  # the body above the disc and all above it move anteriorly
        d, fraction = case.slip
        below = phis[d + 1] if d < n_l else phi_s
        shift = fraction * case.depth * np.array([math.cos(below), -math.sin(below)])
        centers = [c + shift if i <= d else c for i, c in enumerate(centers)]
    return Chain(centers, phis, h[:n_b], a, s_top, phi_s, s_a)


@dataclass
class Frame:
    """Local units -> image pixels."""

    scale: float
    off: np.ndarray

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return p * self.scale + self.off


def _fit(case: Case, bodies: list[tuple[np.ndarray, np.ndarray]], sacrum: np.ndarray,
         rng: np.random.Generator) -> Frame:
    """L1's top to the sacrum's bottom spans a share of the height, the lumbar bodies a share of
    the width; the anterior cortex stays inside with soft tissue in front."""
    H, W = case.height, case.width
    annotated = np.vstack([b for b, _ in bodies[1:]] + [sacrum])
    lumbar = np.vstack([b for b, _ in bodies[1:]])
    ymin, ymax = annotated[:, 1].min(), annotated[:, 1].max()
    span = rng.uniform(0.62, 0.74) if case.thoracic else rng.uniform(0.74, 0.84)
    span *= 5 / case.n_lumbar if case.n_lumbar > 5 else 1
    scale = min(span * H / (ymax - ymin),
                rng.uniform(0.42, 0.52) * W / (lumbar[:, 0].max() - lumbar[:, 0].min()))
    bottom = H * (1 - rng.uniform(0.03, 0.07)) - (span * H - (ymax - ymin) * scale) / 2
    return Frame(scale, np.array([W * rng.uniform(0.80, 0.88) - lumbar[:, 0].max() * scale,
                                  bottom - ymax * scale]))


def _bodies(case: Case, ch: Chain, rng: np.random.Generator):
    """Local outlines of the bodies (T12 first, each with the rows its annotator clicks) and
    the sacrum, with the corner rows of the clicks."""
    outlines, corners = [], []
    last = len(ch.centers) - 1
    for i in range(len(ch.centers)):
        wedge = rng.normal(0, 0.04) + (0.09 if i == last else 0.0) - (0.03 if i == 1 else 0.0)
        n_pts = int(rng.integers(6, 16))
        loss = case.fracture_loss if case.fracture == i else 0.0
        local, clicks = vertebral_body(rng, ch.a * (1 + rng.normal(0, 0.03)),
                                       ch.heights[i] / 2, wedge, n_pts, anterior_loss=loss)
        outlines.append((rot(local, ch.centers[i], ch.phis[i]), clicks))
        corners.append(body_corners(n_pts))
    sacrum = rot(sacrum_outline(rng, ch.s_a, rng.uniform(1.8, 2.2), int(rng.integers(10, 16))),
                 ch.s_top, ch.phi_s)
    return outlines, corners, sacrum


def _shell(outline_px: np.ndarray, mu: float, cortex_px: float, phi: float,
           width_mm: float, texture: float = 0.12) -> Solid:
    """A bone shell elliptical across ``phi``'s anterior direction, ``width_mm`` wide."""
    return Solid(outline_px, width_mm / 2, mu, axis=np.array([math.cos(phi), -math.sin(phi)]),
                 cortex_px=cortex_px, mu_cortex=MU_CORTEX, texture=texture)


def _posterior(case: Case, ch: Chain, frame: Frame, cortex: float) -> list[Solid]:
    """Pedicles, facets and spinous processes (bilateral parts count twice across the beam)."""
    out = []
    depth = case.depth
    for c, phi, hh in zip(ch.centers, ch.phis, [h / 2 for h in ch.heights]):
        a = ch.a
        ped = rect(-a - 0.55 * depth, -a + 0.05, -0.4 * hh, 0.2 * hh)
        spin = np.array([(-a - 0.5 * depth, -0.35 * hh), (-a - 1.25 * depth, 0.05 * hh),
                         (-a - 1.3 * depth, 0.55 * hh), (-a - 0.55 * depth, 0.45 * hh)])
        facet = rect(-a - 0.65 * depth, -a - 0.35 * depth, 0.35 * hh, 1.2 * hh)
        for part, width in ((ped, 16.0), (spin, 9.0), (facet, 22.0)):
            out.append(Solid(smooth_outline(frame(rot(part, c, phi)), 0.1 * frame.scale),
                             width / 2, MU_TRABECULAR, cortex_px=cortex,
                             mu_cortex=MU_CORTEX * 0.4, texture=0.3))
    return out


def _around(case: Case, ch: Chain, frame: Frame, sacrum_px: np.ndarray, cortex: float,
            rng: np.random.Generator) -> list[Solid]:
    """Iliac wings behind the sacrum, ribs and the psoas; a sacralized L5's transverse
    processes over its rudimentary disc."""
    unit = frame.scale
    out = []
    c = sacrum_px.mean(axis=0) + np.array([-0.1 * unit, -0.35 * unit])
    ang = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    phases = rng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + sum(a * np.sin(k * ang + p) for a, k, p in zip((0.12, 0.08, 0.05), (2, 3, 5),
                                                               phases))
    crest = np.where(np.sin(ang) < 0, 1.0, 0.8)   # the crest above rounder, the notch below
    ilium = c + np.c_[1.6 * unit * np.cos(ang), 1.1 * unit * np.sin(ang) * crest] * wobble[:, None]
    out.append(Solid(smooth_outline(ilium, 0.1 * unit), 6.0, MU_TRABECULAR * 1.5,
                     cortex_px=cortex, mu_cortex=MU_CORTEX * 0.8, texture=0.4))
    if case.thoracic:
        for r in range(2):
            start = frame(ch.centers[0]) + np.array([-0.6 * unit, (-0.6 + 0.9 * r) * unit])
            t = np.linspace(0, 1, 14)
            top = np.c_[start[0] + t * 2.4 * unit, start[1] + 0.8 * unit * t ** 1.5]
            rib = np.vstack([top, top[::-1] + (0, 0.22 * unit)])
            out.append(Solid(rib, 6.0, MU_TRABECULAR, cortex_px=cortex,
                             mu_cortex=MU_CORTEX, axis=None))
    top, bottom = frame(ch.centers[1]), frame(ch.s_top)
    ant = np.array([ch.a * 0.2 * unit, 0])
    psoas = np.array([top - ant * 0.5, top + ant * 2, bottom + ant * 6, bottom - ant])
    out.append(Solid(psoas, 30.0, 0.002))
    if case.transitional == SACRALIZED_L5:
        mid = (frame(ch.centers[-1]) + frame(ch.s_top)) / 2 - np.array([0.35 * unit, 0])
        blob = mid + np.c_[0.55 * unit * np.cos(ang), 0.4 * unit * np.sin(ang)]
        out.append(Solid(blob, 15.0, MU_TRABECULAR * 1.6, cortex_px=cortex,
                         mu_cortex=MU_CORTEX, texture=0.3))
    return out


def _t11(case: Case, ch: Chain, frame: Frame, cortex: float, radius: float) -> Solid:
    """T11: a body above T12, a disc's height higher, continuing the curve."""
    rng = _stream(case, 6, 4)
    local, _ = vertebral_body(rng, ch.a * 0.97, ch.heights[0] * 0.48, 0.0, 8)
    phi = ch.phis[0] * 1.1
    center = ch.centers[0] - (ch.heights[0] + rng.uniform(0.22, 0.3)) * axis(phi)
    return _shell(smooth_outline(frame(rot(local, center, phi)), radius), MU_TRABECULAR, cortex,
                  phi, 42.0 * case.depth / 1.4)


def _disease(case: Case, ch: Chain, frame: Frame, bodies_px: list[np.ndarray],
             corners: list[tuple[int, ...]], cortex: float) -> list[Solid]:
    """Anterior osteophytes, vacuum discs and a fractured body's cement."""
    unit = frame.scale
    out = []
    for b in case.osteophytes:
        p = bodies_px[b]
        center = p.mean(axis=0)
        for k in (1, 2):  # anterior-superior, anterior-inferior
            corner = p[corners[b][k]]
            out_dir = (corner - center) / (np.linalg.norm(corner - center) + 1e-9)
            spur = np.array([corner - out_dir * 0.12 * unit + (0, 0.04 * unit),
                             corner + out_dir * 0.14 * unit,
                             corner - out_dir * 0.12 * unit - (0, 0.04 * unit)])
            out.append(Solid(spur, 8.0, MU_CORTEX * 0.6))
    for d in case.vacuum_discs:   # a thin lens of gas along the disc
        last = d == len(ch.centers) - 1
        below, phi_b = (ch.s_top, ch.phi_s) if last else (ch.centers[d + 1], ch.phis[d + 1])
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        lens = np.c_[0.45 * case.depth * np.cos(ang), 0.03 * np.sin(ang)]
        out.append(Solid(frame(rot(lens, (ch.centers[d] + below) / 2, (ch.phis[d] + phi_b) / 2)),
                         10.0, -MU_SOFT))
    if case.cement and case.fracture is not None:
        c = frame(ch.centers[case.fracture])
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        blob = c + np.c_[0.3 * case.depth * unit * np.cos(ang), 0.28 * unit * np.sin(ang)]
        out.append(Solid(blob, 12.0, MU_CEMENT, axis=np.array([1.0, 0.0])))
    return out


def _implants(case: Case, ch: Chain, frame: Frame, rng: np.random.Generator):
    """Pedicle screws in each fused level, a rod joining their heads, cages in discs: solids of
    metal and their regions (drawn as built)."""
    solids, regions, heads = [], [], []
    unit, a, depth = frame.scale, ch.a, case.depth
    n_b = len(ch.centers)
    for lev in case.fused:
        if lev < n_b:
            c, phi, hh = ch.centers[lev], ch.phis[lev], ch.heights[lev] / 2
        else:  # S1 screw
            c, phi, hh = ch.s_top + 0.45 * axis(ch.phi_s), ch.phi_s, 0.35
        tilt = rng.normal(0, 0.06)
        length = depth * rng.uniform(0.95, 1.25)
        w = 0.11 * rng.uniform(0.9, 1.1)
        base_u = -a - 0.55 * depth
        shaft = np.array([(base_u, -w), (base_u + length, -w * 0.6 + tilt * length),
                          (base_u + length + 0.08, tilt * length),
                          (base_u + length, w * 0.6 + tilt * length), (base_u, w)])
        head = rect(base_u - 0.22, base_u + 0.02, -0.17, 0.17)
        shaft_i = frame(rot(shaft - (0, 0.1 * hh), c, phi))
        head_i = frame(rot(head - (0, 0.1 * hh), c, phi))
        screw = np.rint(np.vstack([head_i[:2], shaft_i, head_i[2:]]))
        across = np.array([-math.sin(phi + tilt), -math.cos(phi + tilt)])
        solids.append(Solid(screw, 6.5, MU_METAL, axis=across))
        regions.append(Region(screw, "screw", None))
        heads.append(head_i.mean(axis=0))
    if heads:
        pts = np.asarray(heads)
        direction = pts[-1] - pts[0]
        direction = direction / (np.linalg.norm(direction) + 1e-9)
        normal = np.array([-direction[1], direction[0]])
        path = np.vstack([pts[0] - direction * 0.25 * unit, pts, pts[-1] + direction * 0.25 * unit])
        half_w = 0.07 * unit
        rod = np.rint(np.vstack([path + normal * half_w, (path - normal * half_w)[::-1]]))
        solids.append(Solid(rod, 5.5, MU_METAL))
        regions.append(Region(rod, "rod", None))
    for d in case.cage_discs:  # disc d lies below body d (the last one: above S1)
        upper = ch.centers[d] + ch.heights[d] / 2 * axis(ch.phis[d])
        if d + 1 < n_b:
            phi_low = ch.phis[d + 1]
            lower = ch.centers[d + 1] - ch.heights[d + 1] / 2 * axis(phi_low)
        else:
            phi_low, lower = ch.phi_s, ch.s_top
        gh = max(0.12, float(np.linalg.norm(lower - upper))) * 0.85
        cage = np.rint(frame(rot(rect(-0.55 * a, 0.75 * a, -gh / 2, gh / 2), (upper + lower) / 2,
                                 (ch.phis[d] + phi_low) / 2)))
        solids.append(Solid(cage, 11.0, MU_CAGE))
        regions.append(Region(cage, "cage", None))
    return solids, regions


def _soft_tissue(case: Case, rng: np.random.Generator, spine_back: float) -> np.ndarray:
    """The trunk's line integral: an elliptical section through which the rays run 25-35 cm,
    with fat and muscle variations and bowel gas pockets anterior to the spine's back."""
    H, W = case.height, case.width
    xs = np.arange(W, dtype=np.float32) + 0.5
    ys = np.arange(H, dtype=np.float32)[:, None] + 0.5
    front = W * (1.05 + 0.08 * np.sin(np.pi * ys / H + rng.uniform(-0.5, 0.5)))
    back = W * rng.uniform(-0.05, 0.04) + 0.02 * W * np.sin(2 * np.pi * ys / H)
    mid, half = (front + back) / 2, np.maximum((front - back) / 2, 1)
    chord = np.sqrt(np.clip(1 - ((xs[None, :] - mid) / half) ** 2, 0, 1))
    width_mm = rng.uniform(260, 360)
    line = MU_SOFT * width_mm * chord * (1 + 0.04 * _lowfreq(rng, (H, W), 0.15 * H))
    if case.gas > 0:
        field = _lowfreq(rng, (H, W), 0.07 * H) + 0.4 * _lowfreq(rng, (H, W), 0.025 * H)
        pockets = np.clip(field - (2.3 - 0.4 * case.gas), 0, None) * 2
        ramp = np.clip((xs[None, :] - spine_back) / (0.25 * W), 0, 1)
        line -= MU_SOFT * 60.0 * np.minimum(pockets, 1.0) * ramp * chord
    return line


def _lowfreq(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field (zero mean, unit-ish variance) with features about ``cell`` px big."""
    import cv2

    h, w = shape
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _stream(case: Case, kind: int, k: int) -> np.random.Generator:
    return np.random.default_rng([case.seed, kind, case.index, k])


def render(case: Case) -> tuple[np.ndarray, list[Region], dict]:
    """Render one image: 12-bit pixel values (MONOCHROME2 sense), the annotator's regions (in
    the image as stored, mirrored when the patient faces left) and the facts drawn."""
    rng = np.random.default_rng([case.seed, 6, case.index, 0])   # plan.py: the streams
    spacing = case.pixel_spacing_mm
    ch = _chain(case, rng)
    local, corners, sacrum_local = _bodies(case, ch, rng)
    frame = _fit(case, local, sacrum_local, rng)
    cortex = max(1.0, 1.1 / spacing)
    radius = 0.025 * frame.scale   # corners rounded over about 1 mm
    solids: list[Solid] = []
    regions: list[Region] = []
    names = case.lumbar_names()
    body_width = 45.0 * case.depth / 1.4   # mm across the beam: 1.3 x the body's depth
    bodies_px = []
    for i, (outline, clicks) in enumerate(local):
        solid = smooth_outline(frame(outline), radius)
        exact = snap(frame(outline[clicks]), solid)
        drawn = np.rint(exact)
        bodies_px.append(drawn)
        solids.append(_shell(solid, MU_TRABECULAR, cortex, ch.phis[i], body_width))
        if i >= 1:
            regions.append(Region(drawn, "lumbar", names[i - 1], corners[i], exact))
    s_solid = smooth_outline(frame(sacrum_local), 0.0)   # the promontory is sharp
    s_exact = snap(frame(sacrum_local), s_solid)
    sacrum = np.rint(s_exact)
    # the sacrum with its alae: as deep across the beam at its promontory as at its back
    solids.append(Solid(s_solid, body_width * 0.6, MU_TRABECULAR * 0.9, cortex_px=cortex,
                        mu_cortex=MU_CORTEX, texture=0.12))
    regions.append(Region(sacrum, "sacrum", "S1", (0, 1), s_exact))
    solids += _posterior(case, ch, frame, cortex)
    solids += _around(case, ch, frame, sacrum, cortex, rng)
    if case.thoracic:   # the field reaches higher: T11 above T12 (neither is annotated)
        solids.append(_t11(case, ch, frame, cortex, radius))
    solids += _disease(case, ch, frame, bodies_px, corners, cortex)
    metal, implant_regions = (_implants(case, ch, frame, _stream(case, 6, 2)) if case.implants
                              else ([], []))
    regions += implant_regions
    ex = case.exposure
    assert ex is not None
    erng = _stream(case, 7, 1)
    bone = project(solids + metal, (case.height, case.width), spacing, _stream(case, 6, 1))
    spine_back = float(min(p[:, 0].min() for p in bodies_px))
    line = doubled(bone, ex.doubling_mm / spacing) + _soft_tissue(case, _stream(case, 6, 3),
                                                                  spine_back)
    pixels = expose(line, ex, erng)
    if case.facing_left:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        for r in regions:
            r.mirror(case.width)
    return pixels, regions, _info(case)


def _info(case: Case) -> dict:
    slip = None
    if case.slip is not None:
        slip = {"pair": case.disc_name(case.slip[0]), "fraction": round(case.slip[1], 4)}
    return {
        "implants": case.implants,
        "overlap": bool(case.overlap_discs),
        "overlap_discs": [case.disc_name(d) for d in case.overlap_discs],
        "thoracic": case.thoracic,
        "facing": "left" if case.facing_left else "right",
        "slip": slip,
        "transitional": case.transitional,
        "osteophytes": [case.lumbar_names()[b - 1] for b in case.osteophytes],
        "vacuum_discs": [case.disc_name(d) for d in case.vacuum_discs],
        "fracture": (None if case.fracture is None else
                     {"level": case.lumbar_names()[case.fracture - 1],
                      "anterior_loss": round(case.fracture_loss, 4), "cement": case.cement}),
    }
